"""The command-line client of the REST API: ``model-serve-shim deploy|status|list|logs|...``.

It talks to a server over HTTP only (never imports the core or the server):

* :mod:`~modserv_shim.client.api`: :class:`~modserv_shim.client.api.ApiClient`, one method per endpoint,
  the envelope unwrapped, errors as :class:`~modserv_shim.client.api.ApiError`;
* :mod:`~modserv_shim.client.follow`: a service's state changes, step attempts and log lines as they
  happen (the event stream when the server offers Server-Sent Events, the ``waitFor`` long poll otherwise);
* :mod:`~modserv_shim.client.render`: tables, the live lifecycle display, the curl to try a service;
* :mod:`~modserv_shim.client.cli`: the typer commands, registered on ``model-serve-shim``.
"""
