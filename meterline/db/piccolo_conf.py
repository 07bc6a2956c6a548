"""PICCOLO_CONF target: the engine is the application's one engine, configured at start-up."""

from piccolo.conf.apps import AppRegistry

from meterline.db.engine import DB

__all__ = ["APP_REGISTRY", "DB"]

APP_REGISTRY = AppRegistry(apps=["meterline.db.piccolo_app"])
