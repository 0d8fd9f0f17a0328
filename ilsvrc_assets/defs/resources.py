"""The one resource every asset uses: the deployment's settings and its image source."""

from dagster import ConfigurableResource

from ilsvrc_assets import settings as settings_module
from ilsvrc_assets.archives import ChecksumCache
from ilsvrc_assets.settings import Settings
from ilsvrc_assets.sources import ImageSource, from_settings


class IlsvrcResource(ConfigurableResource):
    """Where the archives come from and where outputs go (see README, "Settings").

    Its fields are those of :class:`~ilsvrc_assets.settings.Settings`, every one under its own
    name, in the plain form ``settings.to_config`` gives (paths as strings); they are generated
    from the dataclass, so a new setting reaches the assets without an edit here. Built from
    environment variables by :func:`resources_for`. Credentials for an HTTP source are read from
    the environment when the source is made (:meth:`image_source`) and are never part of this
    configuration, which Dagster stores with every run.
    """

    # Pydantic (under ConfigurableResource) reads the fields from the class's annotations.
    __annotations__ = settings_module.config_types()

    @classmethod
    def from_settings(cls, settings: Settings) -> "IlsvrcResource":
        return cls(**settings_module.to_config(settings))

    def settings(self) -> Settings:
        """The settings this resource was made from, every field as it was."""
        fields = settings_module.config_types()
        return settings_module.from_config({name: getattr(self, name) for name in fields})

    def image_source(self) -> ImageSource:
        """Where the images come from (``ILSVRC_SOURCE``)."""
        return from_settings(self.settings())

    def checksum_cache(self) -> ChecksumCache:
        return ChecksumCache(self.settings().checksum_cache_json)


def resources_for(settings: Settings | None = None) -> dict[str, object]:
    """The resources of a deployment; tests pass their own settings instead of the environment."""
    return {"ilsvrc": IlsvrcResource.from_settings(settings or settings_module.load())}
