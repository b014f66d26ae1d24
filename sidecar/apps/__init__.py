"""Application types: how each kind of app wants its payloads (sylk, linphone, plugins)."""
