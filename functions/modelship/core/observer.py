"""The observer port: what a door may want to hear about, e.g. to publish metrics."""

from __future__ import annotations

from typing import Protocol

from modelship.core.sessions import LoadedModel


class Observer(Protocol):
    """Called from request threads, concurrently: implementations must be thread-safe and quick."""

    def model_loaded(self, model: LoadedModel) -> None: ...

    def inference_done(self, model: LoadedModel, seconds: float) -> None: ...


class NullObserver:
    def model_loaded(self, model: LoadedModel) -> None:
        pass

    def inference_done(self, model: LoadedModel, seconds: float) -> None:
        pass
