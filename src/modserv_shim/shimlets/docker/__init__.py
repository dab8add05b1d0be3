"""The ``docker`` shimlet: one container per replica on a Docker Engine (see :mod:`.shimlet`)."""

from modserv_shim.shimlets.docker.options import DockerOptions, ImageChoice, ModelVolume
from modserv_shim.shimlets.docker.shimlet import DockerShimlet

__all__ = ["DockerOptions", "DockerShimlet", "ImageChoice", "ModelVolume"]
