"""The base class of application types (payload rules), also for plugins.

An app type turns a :class:`~sidecar.model.Push` into the
:class:`~sidecar.pns.base.Notification` its app expects on a given platform.
It never does I/O.  To add an app type, drop a module into
``extra_applications_dir`` that defines a subclass of :class:`AppType` with a
unique ``name``; an application selects it with ``app_type = <name>``.
"""

from __future__ import annotations


from ..model import Push, PushRequest, PushValidationError
from ..pns.base import Notification


class AppType:
    #: the value of ``app_type`` in applications.ini that selects this class
    name: str = ""

    def check_request(self, request: PushRequest) -> PushRequest:
        """Apply this app type's extra rules to a push request.

        ``request`` has its required fields (app-id, platform, token,
        call-id, from) and None for what the sender did not give.  Return it,
        possibly completed (``dataclasses.replace``), or raise
        :class:`PushValidationError` (status 400 or 404; the message names
        the Sylk JSON key, e.g. ``Field 'to' required``).
        """
        return request

    def build(self, push: Push, platform: str, now: float) -> Notification:
        """Build the outgoing notification for ``platform``.

        ``now`` is wall-clock UNIX time (for send-time fields).  Dispatches to
        ``build_<platform>``; a platform the app type does not know is a
        :class:`PushValidationError` with status 404.
        """
        method = getattr(self, f"build_{platform}", None)
        if method is None:
            raise PushValidationError(
                f"app type {self.name!r} has no payload for platform {platform!r}", 404
            )
        notification: Notification = method(push, now)
        return notification
