"""``privatellm``: the default pipeline, with the model fetched from a private source and verified first.

1. ``model-fetch``  downloads the request's ``modelSource`` (an https URL, or files of a Hugging
   Face-compatible hub) with the bearer token of the configured secret it names, resumable and in
   parallel per file, into the model cache (:mod:`.fetch`); a complete cached file is reused.
2. ``model-verification``  checks every file's SHA-256 against the manifest (the request's, or the
   source's ``manifest.json`` signed with the secret's Ed25519 key; :mod:`.verify`); a mismatch
   fails at once naming the file, and the file leaves the cache.  Sets ``MODEL_FILE`` to the
   verified file.
3. ...  the default pipeline's steps (model-validation, config-rendering, resource-deployment,
   health-check), which see the verified file as the request's ``modelFile``.

A request without ``modelSource`` runs as ``opensourcellm`` (the two steps log that they have
nothing to do).  Secrets: ``PluginContext.server_settings["secrets"]`` (the server's ``secrets``
setting); an unknown name is refused before the deploy is accepted (422).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from modserv_shim.allowlist import refuse
from modserv_shim.errors import Forbidden, PermanentStepError, ValidationFailed
from modserv_shim.kit.pipeline import step
from modserv_shim.pipelines.opensourcellm import MODEL_FILE, MODEL_VALIDATION, OpenSourceLLMPipeline
from modserv_shim.pipelines.privatellm.fetch import FileJob, check_access, fetch_all, mib
from modserv_shim.pipelines.privatellm.options import PrivateLLMOptions
from modserv_shim.pipelines.privatellm.outputs import FETCHED, MANIFEST, PRIVATE
from modserv_shim.pipelines.privatellm.sources import (
    MANIFEST_NAME,
    SIGNATURE_SUFFIX,
    Secret,
    cache_key,
    client,
    file_url,
    parse_secrets,
)
from modserv_shim.pipelines.privatellm.verify import (
    VerifiedIndex,
    check_signature,
    fetch_small,
    load_public_key,
    parse_manifest,
)
from modserv_shim.plugins import (
    Caller,
    Phase,
    PluginContext,
    RetryPolicy,
    Shimlet,
    StepContext,
    StepSpec,
    launch_target,
)
from modserv_shim.spec import DeploySpec, ModelSource

MODEL_FETCH = "model-fetch"
MODEL_VERIFICATION = "model-verification"
PARTIAL = ".partial"


class PrivateLLMPipeline(OpenSourceLLMPipeline):
    """opensourcellm + model-fetch + model-verification; options: :class:`PrivateLLMOptions`."""

    name = "privatellm"
    uses_fields = frozenset({"modelSource"})
    issues_api_keys = True  # each service is served behind its own key (modserv_shim.plugins.API_KEY_OUTPUT)
    Options = PrivateLLMOptions
    options: PrivateLLMOptions

    def __init__(self, ctx: PluginContext) -> None:
        super().__init__(ctx)
        self.secrets: Mapping[str, Secret] = parse_secrets(ctx.server_settings.get("secrets"))
        self.cache_dir = self.options.cache_dir or ctx.data_dir / "privatellm" / "models"
        self._locks: dict[Path, asyncio.Lock] = {}

    # ------------------------------------------------------------------ admission

    def check_request(self, spec: DeploySpec, shimlet: Shimlet) -> None:
        """The default pipeline's checks, and ``modelSource.secret`` must name a configured secret."""
        super().check_request(spec, shimlet)
        source = spec.modelSource
        if source is not None and source.secret is not None and source.secret not in self.secrets:
            raise refuse("modelSource.secret", f"no secret named {source.secret!r} is configured on this server"
                         " (an admin adds it under 'secrets' in the config file)")
        if launch_target(shimlet) != "local":
            raise ValidationFailed(
                f"the privatellm pipeline serves the model from the shim's own cache, behind a key kept on the"
                f" shim's host, which the {shimlet.name} shimlet's workloads cannot see; deploy it with the local"
                " shimlet")

    def check_access(self, spec: DeploySpec, caller: Caller) -> None:
        """An admin, or an operator in one of the groups allowed for the model: its secret's ``groups``,
        or (no secret) this pipeline's ``groups`` option."""
        if caller.is_admin:
            return
        source = spec.modelSource
        secret = self.secrets.get(source.secret) if source is not None and source.secret is not None else None
        allowed = secret.groups if secret is not None else frozenset(self.options.groups)
        if caller.groups & allowed:
            return
        whose = f"secret {secret.name}" if secret is not None else "the privatellm pipeline"
        if not allowed:
            raise Forbidden(f"{whose} allows no group, so only admins may deploy through it; an admin adds"
                            " groups to it in the config file")
        raise Forbidden(f"deploying this private model needs membership of {' or '.join(sorted(allowed))}"
                        f" (allowed by {whose}); {caller.name} is in {', '.join(sorted(caller.groups)) or 'no group'}")

    async def run_step(self, step: StepSpec, ctx: StepContext) -> None:
        """After model-verification the steps see the verified file as the request's ``modelFile``."""
        served = MODEL_FILE.get(ctx, None) if ctx.spec.modelSource is not None else None
        if served is not None and step.name not in (MODEL_FETCH, MODEL_VERIFICATION):
            ctx = ServedFile(ctx, served)
        await super().run_step(step, ctx)

    # ------------------------------------------------------------------ helpers

    def _secret(self, source: ModelSource) -> Secret | None:
        if source.secret is None:
            return None
        secret = self.secrets.get(source.secret)
        if secret is None:  # configured at admission, gone after a restart with another config
            raise PermanentStepError(f"no secret named {source.secret!r} is configured on this server any more")
        return secret

    def _lock(self, folder: Path) -> asyncio.Lock:
        return self._locks.setdefault(folder, asyncio.Lock())

    def _jobs(self, source: ModelSource, folder: Path) -> list[FileJob]:
        return [FileJob(name, file_url(source, name), folder / name, folder / PARTIAL / f"{quote(name, safe='')}.part")
                for name in source.files]

    async def _fetch(self, ctx: StepContext, source: ModelSource, jobs: list[FileJob], secret: Secret | None) -> None:
        async with client(secret, read_timeout=self.options.read_timeout) as http:
            await fetch_all(jobs, http, ctx.log, secret=source.secret, parallel=self.options.parallel_files,
                            resume_attempts=self.options.resume_attempts, interval=self.options.progress_interval)

    # ------------------------------------------------------------------ 1. fetch

    @step(MODEL_FETCH, before=MODEL_VALIDATION, phase=Phase.PIPELINE, timeout=6 * 3600,
          retry=RetryPolicy(attempts=3, backoff=5, max_delay=60),
          description="download modelSource into the model cache (resumable, parallel per file)",
          writes=(FETCHED, PRIVATE))
    async def fetch_model(self, ctx: StepContext) -> None:
        source = ctx.spec.modelSource
        if source is None:
            ctx.log("no modelSource: the request's modelFile is served as given")
            return
        secret = self._secret(source)
        folder = self.cache_dir / cache_key(source)
        PRIVATE.set(ctx, [str(folder)])  # from here on masked in logs and views
        where = source.url if source.hub is None else f"{source.hub.endpoint}/{source.hub.repo}@{source.hub.revision}"
        ctx.set_params(source=where, files=source.files, cache=str(folder))
        jobs = self._jobs(source, folder)
        async with self._lock(folder):
            folder.mkdir(parents=True, exist_ok=True)
            missing = [j for j in jobs if not j.final.exists()]
            who = f"secret {source.secret}" if source.secret else "no credentials"
            if not missing:
                async with client(secret, read_timeout=self.options.read_timeout) as http:
                    await check_access(http, jobs[0].url, ctx.log, source.secret)
                size = sum(j.final.stat().st_size for j in jobs)
                ctx.log(f"cache hit: {len(jobs)} file{'s' if len(jobs) != 1 else ''}, {mib(size)} in {folder}"
                        f" ({who} still accepted)")
            else:
                ctx.log(f"fetching {len(missing)} of {len(jobs)} file{'s' if len(jobs) != 1 else ''} with {who}"
                        f" into {folder}")
                await self._fetch(ctx, source, missing, secret)
        serve = folder / source.served if source.served else folder
        FETCHED.set(ctx, {"dir": str(folder), "files": {j.name: str(j.final) for j in jobs}, "serve": str(serve)})

    # ------------------------------------------------------------------ 2. verify

    @step(MODEL_VERIFICATION, before=MODEL_VALIDATION, phase=Phase.PIPELINE, timeout=3600,
          retry=RetryPolicy(attempts=2, backoff=2),
          description="every file's SHA-256 against the (signed) manifest",
          reads=(FETCHED,), writes=(MODEL_FILE, MANIFEST, PRIVATE))
    async def verify_model(self, ctx: StepContext) -> None:
        source = ctx.spec.modelSource
        if source is None:
            ctx.log("no modelSource: nothing to verify")
            return
        secret = self._secret(source)
        fetched = FETCHED.get(ctx)
        folder = Path(fetched["dir"])
        jobs = self._jobs(source, folder)
        async with self._lock(folder):
            if source.manifest is not None:
                manifest, origin = dict(source.manifest), "given in the request"
            else:
                manifest, origin = await self._source_manifest(ctx, source, secret)
            absent = [f for f in source.files if f not in manifest]
            if absent:
                raise PermanentStepError(f"the manifest ({origin}) has no SHA-256 for {', '.join(absent)}")
            gone = [j for j in jobs if not j.final.exists()]
            if gone:  # removed after a mismatch (this is a retry), or by someone else
                ctx.log(f"{', '.join(j.name for j in gone)} not in the cache any more: fetching again")
                await self._fetch(ctx, source, gone, secret)
            index = VerifiedIndex(folder)
            digests = await asyncio.gather(*(asyncio.to_thread(index.digest, j.name, j.final) for j in jobs))
            for job, (digest, remembered) in zip(jobs, digests, strict=True):
                want = manifest[job.name]
                if digest != want:
                    job.final.unlink(missing_ok=True)
                    index.forget(job.name)
                    await asyncio.to_thread(index.save)
                    raise PermanentStepError(
                        f"{job.name} does not match the manifest ({origin}): SHA-256 {digest}, expected {want};"
                        " the file was removed from the cache (a retry fetches it again)")
                index.remember(job.name, job.final, digest)
                ctx.log(f"{job.name}: SHA-256 {digest[:16]}... matches"
                        + (" (remembered from an earlier check)" if remembered else ""))
            await asyncio.to_thread(index.save)
        MANIFEST.set(ctx, {"source": origin, "files": {j.name: manifest[j.name] for j in jobs}})
        MODEL_FILE.set(ctx, str(fetched["serve"]))
        PRIVATE.set(ctx, [str(folder), str(fetched["serve"])])
        ctx.log(f"{len(jobs)} file{'s' if len(jobs) != 1 else ''} verified; serving {fetched['serve']}")

    async def _source_manifest(self, ctx: StepContext, source: ModelSource,
                               secret: Secret | None) -> tuple[dict[str, str], str]:
        url = file_url(source, MANIFEST_NAME)
        key_file = secret.public_key_file if secret is not None else None
        if key_file is None and not self.options.allow_unsigned_manifest:
            who = f"secret {source.secret}" if source.secret else "this source (it names no secret)"
            raise PermanentStepError(
                f"the manifest would come from the source ({url}) unsigned: configure public_key_file for {who},"
                " give modelSource.manifest in the request, or set the option allow_unsigned_manifest")
        async with client(secret, read_timeout=self.options.read_timeout) as http:
            data = await fetch_small(http, url, source.secret, "manifest")
            if key_file is None:
                ctx.log(f"manifest {url} is not signed (allow_unsigned_manifest)", level="warning")
                return parse_manifest(data, url), f"{url}, unsigned"
            assert secret is not None
            key = load_public_key(key_file, secret.name)
            signature = await fetch_small(http, url + SIGNATURE_SUFFIX, source.secret, "manifest signature")
        check_signature(key, data, signature, url)
        ctx.log(f"manifest {url}: Ed25519 signature good (public key of secret {secret.name})")
        return parse_manifest(data, url), f"{url}, signed"


class ServedFile:
    """A :class:`StepContext` whose ``spec.modelFile`` is the verified file in the cache."""

    def __init__(self, ctx: StepContext, model_file: str) -> None:
        self._ctx = ctx
        self._spec = ctx.spec.model_copy(update={"modelFile": model_file})

    @property
    def service_id(self) -> str:
        return self._ctx.service_id

    @property
    def spec(self) -> DeploySpec:
        return self._spec

    @property
    def operator(self) -> str:
        return self._ctx.operator

    @property
    def attempt(self) -> int:
        return self._ctx.attempt

    @property
    def dry_run(self) -> bool:
        return self._ctx.dry_run

    @property
    def shimlet(self) -> Shimlet:
        return self._ctx.shimlet

    @property
    def outputs(self) -> Mapping[str, Any]:
        return self._ctx.outputs

    @property
    def resource_id(self) -> str | None:
        return self._ctx.resource_id

    @property
    def data_dir(self) -> Path:
        return self._ctx.data_dir

    def log(self, message: str, level: str = "info", **fields: Any) -> None:
        self._ctx.log(message, level, **fields)

    def set_output(self, key: str, value: Any) -> None:
        self._ctx.set_output(key, value)

    def set_params(self, **params: Any) -> None:
        self._ctx.set_params(**params)

    async def set_resource(self, resource_id: str) -> None:
        await self._ctx.set_resource(resource_id)

    def set_timeout(self, seconds: float, *, force: bool = False) -> None:
        self._ctx.set_timeout(seconds, force=force)
