"""Command-line clients compatible with Sylk Pushserver's scripts.

``pushclient`` (:mod:`.v1`) posts one push to ``/push``; ``pushclient-v2``
(:mod:`.v2`) stores, removes and pushes to tokens through ``/v2/tokens``.
Both exit 0 only when the server answers HTTP 200.
"""
