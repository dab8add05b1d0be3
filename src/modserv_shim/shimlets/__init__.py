"""The built-in shimlets: ``local`` (model servers as processes of this machine), ``k8s`` and ``docker``.

Every shimlet package has the same small set of files with the same roles, so that a
reader (and the next shimlet: edge) finds each part in the same place:

``options.py``  the options model: a :class:`~modserv_shim.kit.options.PluginOptions`
                subclass, one ``Field(..., description=...)`` per key, validators for the
                rules between keys; parsed with ``Options.parse(ctx.options)``.  The
                plugin's docs page shows its ``markdown_table()``, and a test keeps the
                two the same.
``render.py``   what the workload looks like, without starting anything: the local
                process spec, the Kubernetes manifests, the Docker create bodies.  ``render`` (dry runs) and
                ``create`` both use it.
``status.py``   how what the environment reports adds up to one
                :class:`~modserv_shim.plugins.ResourceStatus` (pure; no I/O).
``shimlet.py``  the plugin class and its contracts (module docstring).  It builds on
                :mod:`modserv_shim.kit.shimlet`: :class:`~modserv_shim.kit.shimlet.ShimletBase`
                for the lifecycle guards (start once, auto-start, refuse after close) and
                :class:`~modserv_shim.kit.shimlet.WatchHub` for ``watch`` (fan-out to every
                consumer, a status published only when it changed).

Helper modules beside them are the environment's own business (``local``: ``replica``,
``state``, ``procfs``, ``ports``, ``logfiles``; ``k8s``: ``kube``, ``informer``, ``cache``,
``naming``, ``podspec``, ``reasons``, ``validation``; ``docker``: ``engine``, ``watcher``,
``keeper``, ``deploy``, ``reasons``).  Shimlets never import each other
(an import-linter contract).
"""
