"""Settings from the environment: defaults, parsing, refusals."""

import pytest

from meterline.config import ConfigError, Settings
from meterline.permissions import Permission, allows


def test_defaults_are_production() -> None:
    settings = Settings.from_env({})
    assert settings.env == "production"
    assert settings.late_usage_grace_hours == 1
    assert settings.database_url is None
    assert settings.role_aliases == {}


def test_values_are_read() -> None:
    settings = Settings.from_env(
        {
            "METERLINE_ENV": "development",
            "DATABASE_URL": "postgresql://x@h/db",
            "CLERK_AUTHORIZED_PARTIES": "https://app.example, https://admin.example ,",
            "LATE_USAGE_GRACE_HOURS": "3",
            "PORT": "9000",
            "ROLE_ALIASES": "owner=company_admin, viewer=staff",
        }
    )
    assert settings.is_development
    assert settings.clerk_authorized_parties == ("https://app.example", "https://admin.example")
    assert (settings.late_usage_grace_hours, settings.port) == (3, 9000)
    assert settings.role_aliases == {"owner": "company_admin", "viewer": "staff"}


@pytest.mark.parametrize(
    "env",
    [
        {"METERLINE_ENV": "staging"},
        {"LATE_USAGE_GRACE_HOURS": "one"},
        {"LATE_USAGE_GRACE_HOURS": "-1"},
        {"DB_POOL_MIN_SIZE": "10", "DB_POOL_MAX_SIZE": "5"},
        {"ROLE_ALIASES": "owner"},
        {"ROLE_ALIASES": "robot=service"},  # user tokens never become service tokens
        {"ROLE_ALIASES": "owner=root"},
    ],
)
def test_bad_values_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        Settings.from_env(env)


def test_aliases_map_onto_the_built_in_roles() -> None:
    aliases = {"owner": "company_admin", "viewer": "staff"}
    assert allows("owner", Permission.RECORD_USAGE, aliases)
    assert allows("viewer", Permission.READ_USAGE, aliases)
    assert not allows("viewer", Permission.RECORD_USAGE, aliases)
    assert not allows("owner", Permission.RECORD_USAGE)  # without the alias: unknown role
