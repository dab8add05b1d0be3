"""acme-endpoints-shimlet: a modserv-shim shimlet for OpenAI-compatible servers that already run."""

from acme_endpoints.shimlet import EndpointsOptions, EndpointsShimlet

__all__ = ["EndpointsOptions", "EndpointsShimlet"]
