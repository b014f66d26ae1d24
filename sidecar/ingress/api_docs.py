"""OpenAPI documentation models of the HTTP API (shown at /docs, not used for validation).

Validation is :mod:`sidecar.admission`'s (Sylk's lenient coercions and exact
messages do not fit a pydantic model); these models only describe the bodies.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class SylkAnswer(BaseModel):
    """Every answer of the API has this shape."""

    code: int = Field(description="the result code (for a push: the push service's result)")
    description: str
    data: Any = Field(default_factory=dict)


class PushRequestDoc(BaseModel):
    """The v1 push request (Sylk Pushserver keys, hyphenated)."""

    app_id: str = Field(alias="app-id", description="the application id (bundle id)")
    platform: str = Field(description="apple/ios/apns or firebase/android/fcm")
    token: str = Field(description="the device token")
    call_id: str = Field(alias="call-id")
    from_: str = Field(alias="from", description="caller SIP URI")
    to: str | None = Field(None, description="callee SIP URI (required by sylk apps)")
    event: str | None = Field(
        None,
        description="incoming_session, incoming_conference_request, cancel, message, transfer",
    )
    device_id: str | None = Field(None, alias="device-id")
    from_display_name: str | None = Field(None, alias="from-display-name")
    media_type: str | None = Field(
        None,
        alias="media-type",
        description="audio, video, image, chat, sms, file-transfer; required unless cancel",
    )
    silent: bool | str | int = Field(True, description="true/false, 1/0, \"1\"/\"0\"")
    reason: str | None = None
    badge: int | str = 1
    filename: str | None = None
    filetype: str | None = None
    account: str | None = None
    content: str | None = None
    content_type: str | None = Field(None, alias="content-type")


def request_body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting ``model`` as the JSON request body."""
    schema = model.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}
    }


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": SylkAnswer, "description": "invalid request"},
    403: {"model": SylkAnswer, "description": "access denied by access list"},
    404: {"model": SylkAnswer, "description": "platform or application not configured"},
    413: {"model": SylkAnswer, "description": "request body too large"},
}


class AddTokenDoc(BaseModel):
    """Store a device token for an account."""

    app_id: str = Field(alias="app-id")
    platform: str
    token: str = Field(description="for apple: '<voip>-<regular>' stores both tokens")
    device_id: str = Field(alias="device-id")
    silent: bool | str | int = True
    user_agent: str | None = Field(None, alias="user-agent")


class RemoveTokenDoc(BaseModel):
    """Forget one device (or every device of the app when device-id is absent)."""

    app_id: str = Field(alias="app-id")
    device_id: str | None = Field(None, alias="device-id")


class PushV2Doc(BaseModel):
    """Push to the stored devices of an account."""

    call_id: str = Field(alias="call-id")
    from_: str = Field(alias="from")
    to: str
    event: str | None = None
    from_display_name: str | None = Field(None, alias="from-display-name")
    media_type: str | None = Field(None, alias="media-type")
    reason: str | None = None
    filename: str | None = None
    filetype: str | None = None
    account: str | None = None
    content: str | None = None
    content_type: str | None = Field(None, alias="content-type")
    badge: int | str = 1
