"""Push notification sidecar for SIP proxies (APNs and FCM, Sylk Pushserver API)."""

__version__ = "0.1.0"
