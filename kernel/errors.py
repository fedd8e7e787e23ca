"""The project's own exceptions; library errors are wrapped in these with `raise ... from`."""


class CityOpsError(Exception):
    """Base of every error the project raises on purpose."""


class ConfigError(CityOpsError):
    """Settings or a city config file are wrong."""


class StoreError(CityOpsError):
    """A backing store (database, Redis, InfluxDB) failed."""


class DuplicateError(CityOpsError):
    """A record with that id exists already."""
