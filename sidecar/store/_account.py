"""Accounts are ``user@domain``; the stores keep the two halves in separate columns."""

from __future__ import annotations

from .base import DeviceRecord


def split_account(account: str) -> tuple[str, str]:
    """Split ``user@domain`` into (user, domain) at the first ``@``.

    Raises:
        ValueError: no ``@``, or an empty user or domain.
    """
    username, at, domain = account.partition("@")
    if not at or not username or not domain:
        raise ValueError(f"account must look like user@domain: {account!r}")
    return username, domain


def join_account(username: str, domain: str) -> str:
    return f"{username}@{domain}"


def silent_to_text(silent: bool) -> str:
    """Sylk's schema keeps ``silent`` as the text '1' / '0'."""
    return "1" if silent else "0"


def silent_from_text(value: object) -> bool:
    """Read back what Sylk (or we) wrote: '1'/'0', 'true'/'false', or a bool/int."""
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off", "")
    if value is None:
        return True  # Sylk's default
    return bool(value)


def record_row(record: DeviceRecord) -> tuple[object, ...]:
    """The record as a row of Sylk's columns, in the order both stores use:
    username, domain, device_id, app_id, background_token, device_token,
    platform, silent, user_agent."""
    username, domain = split_account(record.account)
    return (
        username, domain, record.device_id, record.app_id, record.background_token,
        record.device_token, record.platform, silent_to_text(record.silent), record.user_agent,
    )
