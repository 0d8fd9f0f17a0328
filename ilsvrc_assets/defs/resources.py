"""The one resource every asset uses: the deployment's settings and its archive source."""

from contextlib import AbstractContextManager
from pathlib import Path

from dagster import ConfigurableResource

from ilsvrc_assets import fileio, settings as settings_module
from ilsvrc_assets.archives import ChecksumCache
from ilsvrc_assets.settings import Settings
from ilsvrc_assets.sources import ImageSource, from_settings


class IlsvrcResource(ConfigurableResource):
    """Where the archives come from and where outputs go (see README, "Settings").

    Built from environment variables by :func:`from_settings`; credentials for an HTTP source are
    read from the environment at download time and are never part of this configuration.
    """

    source: str = "sample"
    data_dir: str
    local_dir: str | None = None
    http_url: str | None = None
    sample_dir: str
    train_shards: int
    validation_shards: int
    workers: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "IlsvrcResource":
        return cls(
            source=settings.source,
            data_dir=str(settings.data_dir),
            local_dir=str(settings.local_dir) if settings.local_dir else None,
            http_url=settings.http_url,
            sample_dir=str(settings.sample_dir),
            train_shards=settings.num_shards["train"],
            validation_shards=settings.num_shards["validation"],
            workers=settings.workers,
        )

    def settings(self) -> Settings:
        return Settings(
            source=self.source,
            data_dir=Path(self.data_dir),
            local_dir=Path(self.local_dir) if self.local_dir else None,
            http_url=self.http_url,
            sample_dir=Path(self.sample_dir),
            num_shards={"train": self.train_shards, "validation": self.validation_shards},
            workers=self.workers,
        )

    def image_source(self) -> ImageSource:
        """Where the images come from (``ILSVRC_SOURCE``)."""
        return from_settings(self.settings())

    def checksum_cache(self) -> ChecksumCache:
        return ChecksumCache(self.settings().state_dir / "checksums.json")

    def lock_path(self, name: str) -> Path:
        return self.settings().lock_path(name)

    def exclusive(self, name: str) -> AbstractContextManager[None]:
        """Hold the lock on output ``name`` (e.g. an asset's name) while writing it; refuses
        (:class:`fileio.BusyError`, naming the holder) while another run writes it."""
        return fileio.exclusive(self.lock_path(name), f"{name} in {self.data_dir}")


def resources_for(settings: Settings | None = None) -> dict[str, object]:
    """The resources of a deployment; tests pass their own settings instead of the environment."""
    return {"ilsvrc": IlsvrcResource.from_settings(settings or settings_module.load())}
