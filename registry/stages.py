"""Stages staging → production → archived, carried by MLflow aliases (`staging`,
`production`) and a `stage` tag on each version (MLflow's stage API is deprecated).

Every change runs inside the audit log's per-model lock: read who holds production,
evaluate the gate, move the alias and tags, write the audit entry, commit. Whatever
path set the alias (towerops CLI, `mlflow run -e promote`, the MLflow UI via webhook, or
`reconcile`), the same code decides, so all paths end the same way.

The gate never wedges the registry: when it cannot evaluate a version that someone moved
the alias to (UI, dropped webhook), that is a refusal like a failed gate (alias reverted,
stage tags restored, audit entry with the error) and reconcile goes on; a CLI promotion
that cannot be gated changes nothing and says why (`GateError`). `reconcile` also brings
storage (pointer, `model_versions` row) and the stage tags in line with the registry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

from ml.logs import get_logger
from registry.audit import AuditEntry, AuditLog, default_actor
from registry.gate import GateResult, RegistryConfig, check_gate
from registry.metrics import EvaluationMetrics
from registry.semver import SemVer, next_semver

log = get_logger("deployment")

STAGES = ("staging", "production", "archived")
ALIASES = ("staging", "production")
STAGE_TAG = "stage"
TRIGGERS = ("cli", "mlflow_run", "webhook", "reconcile", "api", "main", "monitoring", "catalog_refresh", "retrain")
METRIC_TAG_PREFIX = "metric."  # version tags `metric.<name>` that `register` writes from the evaluation


def metrics_from_tags(tags: Mapping[str, str] | None) -> dict[str, float]:
    """The evaluation metrics a version carries as `metric.<name>` tags (non-numbers skipped)."""
    out: dict[str, float] = {}
    for k, v in (tags or {}).items():
        if k.startswith(METRIC_TAG_PREFIX):
            try:
                out[k[len(METRIC_TAG_PREFIX):]] = float(v)
            except ValueError:
                continue
    return out


class GateFailed(RuntimeError):
    """The promotion gate refused a version; nothing was changed."""

    def __init__(self, result: "PromotionResult") -> None:
        self.result = result
        super().__init__(
            f"version {result.version} was not promoted to production: {result.gate.summary() if result.gate else ''}. "
            "Fix the model, or override with --force --reason '...'"
        )


class GateError(ValueError):
    """The gate could not evaluate a version (its model or evaluation data could not be read);
    nothing was changed. A user error: the CLI exits 2 with the message."""

    def __init__(self, version: str, production: str | None, cause: BaseException) -> None:
        self.version, self.production, self.cause = version, production, cause
        super().__init__(
            f"could not gate v{version}{' against production v' + production if production else ''}: "
            f"{_first_line(cause)}. Nothing was changed. Fix the cause, pass --data to evaluate on other data, "
            "or override with --force --reason '...'")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class MetricsProvider(Protocol):
    def __call__(self, versions: list[str], data: Any | None) -> dict[str, dict[str, float]]: ...


DeployHook = Callable[[str, str, Any], Any]


@dataclass
class PromotionResult:
    model_name: str
    version: str
    action: str
    to_stage: str | None
    from_stage: str | None = None
    previous_version: str | None = None
    semver: str | None = None
    gate: GateResult | None = None
    forced: bool = False
    changed: bool = True
    audit_id: int | None = None
    upload: Any = None          # the deploy hook's upload + verify, before the alias moved
    deployment: Any = None      # the deploy hook's activation (pointer, table), after the audit commit
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None    # why the gate or the deployment could not run (a refusal, or a forced promotion)
    reverted: bool = False      # a refusal of an alias set outside towerops: the alias was put back
    repairs: list[str] = field(default_factory=list)   # what reconcile brought in line (storage, stage tags)

    def describe(self) -> str:
        repairs = "".join(f"; {r}" for r in self.repairs)
        if self.action == "refused":
            why = self.error or (self.gate.summary() if self.gate else "refused")
            if self.reverted:
                done = (f"production alias put back on v{self.previous_version}" if self.previous_version
                        else "production alias removed")
            else:
                done = "nothing changed"
            return f"refused: {self.model_name} v{self.version} -> {self.to_stage}: {why}; {done}{repairs}"
        if self.action == "repair":
            return f"repaired {self.model_name} (production v{self.version}){repairs}"
        if not self.changed:
            return f"{self.model_name} v{self.version} already in {self.to_stage}; nothing changed{repairs}"
        prev = f" (was v{self.previous_version})" if self.previous_version else ""
        gate = f"; {self.gate.summary()}" if self.gate else ""
        error = f"; {self.error}" if self.error else ""
        return (f"{self.action}: {self.model_name} v{self.version} [{self.semver}] -> {self.to_stage}{prev}{gate}"
                f"{error}{repairs}")


class ModelRegistry:
    """Registering, stage moves with the gate, rollback, reconcile and history for one model name."""

    def __init__(self, config: RegistryConfig | None = None, client: Any = None, audit: AuditLog | None = None,
                 deploy_hook: DeployHook | None = None, metrics_provider: MetricsProvider | None = None,
                 name: str | None = None) -> None:
        from mlflow import MlflowClient

        from ml.settings import ensure_tracking_uri

        ensure_tracking_uri()
        if config is None:
            from registry.gate import load_registry_config

            config = load_registry_config(None)  # the platform config's registry section (towerops.yaml)
        self.config = config
        self.name = name or self.config.model_name
        self.client = client or MlflowClient()
        self.audit = audit or AuditLog()
        self.deploy_hook = deploy_hook
        if deploy_hook is not None and getattr(deploy_hook, "audit", False) is None:
            deploy_hook.audit = self.audit  # its activation lock: the audit database every host shares
        self.metrics_provider = metrics_provider or EvaluationMetrics(self)

    # ------------------------------------------------------------- reading
    def alias_version(self, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException:
            return None

    def version(self, version: str | int):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(self.name, str(version))
        except MlflowException as exc:
            raise ValueError(f"model {self.name!r} has no version {version!r}: {exc.message}") from None

    def versions(self) -> list[Any]:
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(f"name='{self.name}'")
        except MlflowException:
            return []
        return sorted(found, key=lambda v: int(v.version))

    def status(self) -> list[dict[str, Any]]:
        aliases = {a: self.alias_version(a) for a in ALIASES}
        rows = []
        for mv in self.versions():
            v = str(mv.version)
            rows.append({
                "version": v,
                "semver": mv.tags.get("semver"),
                "stage": mv.tags.get(STAGE_TAG, "none"),
                "aliases": ",".join(a for a, holder in aliases.items() if holder == v),
                "run_id": mv.run_id,
                "ndcg_at_10": mv.tags.get("metric.ndcg_at_10"),
                "created": time.strftime("%Y-%m-%d %H:%M", time.gmtime(mv.creation_timestamp / 1000)),
            })
        return rows

    def history(self, limit: int | None = 50) -> list[AuditEntry]:
        return self.audit.entries(self.name, limit=limit)

    # --------------------------------------------------------- registering
    def register(self, run_id: str, model_uri: str | None = None, metrics: Mapping[str, float] | None = None,
                 eval_data_hash: str | None = None, description: str | None = None, actor: str | None = None,
                 trigger: str = "api") -> Any:
        """Register a training run's recommender as a new version with its semver and lineage tags."""
        import mlflow

        run = self.client.get_run(run_id)
        tags = run.data.tags
        model_uri = model_uri or tags.get("towerops.model_uri")
        if not model_uri:
            raise ValueError(f"run {run_id} has no logged recommender (tag towerops.model_uri); "
                             "register the run of a `train` entry point")
        meta = {"embedding_dim": tags.get("towerops.embedding_dim"),
                "feature_schema_hash": tags.get("towerops.feature_schema_hash"),
                "towers_fingerprint": tags.get("towerops.towers_fingerprint"),
                "catalog_hash": tags.get("towerops.catalog_hash"),
                "data_hash": tags.get("towerops.data_hash"), "run_id": run_id}
        with self.audit.locked(self.name) as conn:
            existing = self.versions()
            previous, prev_meta = self._semver_base(existing, meta)
            taken = [SemVer.parse(mv.tags["semver"]) for mv in existing if "semver" in mv.tags]
            semver, bump, why = next_semver(previous, prev_meta, meta, {str(mv.run_id) for mv in existing}, taken)
            version_tags = {"semver": str(semver), "semver_bump": bump, STAGE_TAG: "none",
                            "data_hash": str(meta["data_hash"]), "embedding_dim": str(meta["embedding_dim"]),
                            "feature_schema_hash": str(meta["feature_schema_hash"]),
                            "towers_fingerprint": str(meta["towers_fingerprint"] or ""),
                            "catalog_hash": str(meta["catalog_hash"] or ""),
                            # absolute (a folder's path, a DSN without password): means the same on every host
                            "data_source": tags.get("towerops.data_source") or run.data.params.get("data.source", "")}
            if tags.get("towerops.eval_set"):  # the exact evaluation set, read through the tracking server
                version_tags["eval_set"] = f"runs:/{run_id}/{tags['towerops.eval_set']}"
                version_tags["eval_set_hash"] = tags.get("towerops.eval_set_hash", "")
            for k, v in (metrics or {}).items():
                version_tags[f"{METRIC_TAG_PREFIX}{k}"] = f"{float(v):.6g}"
            if eval_data_hash:
                version_tags["eval_data_hash"] = eval_data_hash
            mv = mlflow.register_model(model_uri, self.name, tags=version_tags)
            if description:
                self.client.update_model_version(self.name, mv.version, description=description)
            self.audit.record(conn, AuditEntry(self.name, str(mv.version), "register", to_stage="none",
                                               semver=str(semver), actor=actor or default_actor(),
                                               reason=f"{bump}: {why}", trigger=trigger))
        log.info("registered %s v%s as %s (%s: %s)", self.name, mv.version, semver, bump, why)
        return self.client.get_model_version(self.name, mv.version)

    def _semver_base(self, existing: list[Any], meta: Mapping[str, Any]) -> tuple[SemVer | None, dict | None]:
        """The version a new one is numbered against: the production holder; else (or when the
        candidate's towers match another version, e.g. a catalog refresh of a staging version)
        the latest version with the same towers; else the highest version."""
        from registry.semver import same_space

        described = [(SemVer.parse(mv.tags["semver"]), {**mv.tags, "run_id": mv.run_id}) for mv in existing
                     if "semver" in mv.tags]
        if not described:
            return None, None
        holder = self.alias_version("production")
        production = next(((sv, m) for (sv, m), mv in zip(described, [mv for mv in existing if "semver" in mv.tags])
                           if str(mv.version) == holder), None)
        if production is not None and same_space(production[1], meta):
            return production
        sharing = [(sv, m) for sv, m in described if same_space(m, meta)]
        if sharing:
            return max(sharing, key=lambda d: d[0])
        return production or max(described, key=lambda d: d[0])

    # ------------------------------------------------------------- the gate
    def run_gate(self, candidate: str, production: str | None, data: Any = None) -> GateResult:
        """The gate for `candidate` against `production`, both evaluated on the same data (the
        candidate's logged evaluation set by default). Raises whatever stops the evaluation."""
        versions = [candidate] + ([production] if production else [])
        metrics = self.metrics_provider(versions, data)
        result = check_gate(metrics[candidate], metrics.get(production) if production else None, self.config.gate,
                            candidate, production)
        result.notes = list(getattr(self.metrics_provider, "last_notes", None) or [])
        return result

    # ------------------------------------------------------------- moving
    def _set_stage_tag(self, version: str, stage: str) -> None:
        self.client.set_model_version_tag(self.name, version, STAGE_TAG, stage)

    def _move_production(self, version: str, previous: str | None) -> None:
        self._set_stage_tag(version, "production")
        self.client.set_registered_model_alias(self.name, "production", version)
        if previous and previous != version:
            self._set_stage_tag(previous, "archived")
        if self.alias_version("staging") == version:
            self.client.delete_registered_model_alias(self.name, "staging")

    def _prepare_deploy(self, version: str) -> Any:
        """Upload the version before any pointer moves (hooks with a `prepare` step)."""
        prepare = getattr(self.deploy_hook, "prepare", None)
        return prepare(self.name, version, self.version(version)) if prepare is not None else None

    def _deploy(self, result: PromotionResult) -> None:
        if self.deploy_hook is None or not result.changed or result.to_stage != "production":
            return
        t0 = time.time()
        result.deployment = self.deploy_hook(self.name, result.version, self.version(result.version))
        result.timings["deploy_s"] = time.time() - t0

    def promote(self, version: str | int, stage: str = "production", force: bool = False, reason: str | None = None,
                actor: str | None = None, trigger: str = "cli", data: Any = None) -> PromotionResult:
        """Move a version to a stage; production goes through the gate unless forced (with a reason)."""
        version = str(version)
        if stage not in STAGES:
            raise ValueError(f"stage {stage!r} is unknown: use one of {', '.join(STAGES)}")
        if force and not (reason and reason.strip()):
            raise ValueError("--force needs --reason '...': forced promotions are recorded with their reason")
        actor = actor or default_actor()
        t0 = time.time()
        self.version(version)  # an unknown version fails before anything is locked
        gate_error: GateError | None = None
        with self.audit.locked(self.name) as conn:
            self._reconcile_locked(conn, trigger="reconcile")  # an alias moved outside towerops first
            mv = self.version(version)  # read after reconcile: it may have restored stage tags
            from_stage = mv.tags.get(STAGE_TAG, "none")
            holder = self.alias_version("production") if stage == "production" else self.alias_version(stage)
            result = PromotionResult(self.name, version, "promote", stage, from_stage, holder, mv.tags.get("semver"),
                                     forced=force)
            if stage == "production":
                if holder == version:
                    result.changed = False
                    return result
                try:
                    result.gate = self.run_gate(version, holder, data)
                except Exception as exc:  # noqa: BLE001 - any failure to evaluate: nothing changes (or forced)
                    if not force:  # raised after the block: what reconcile did above is committed
                        gate_error = GateError(version, holder, exc)
                        gate_error.__cause__ = exc
                    result.error = f"the gate could not run ({_first_line(exc)}); forced"
                result.timings["gate_s"] = time.time() - t0
                if gate_error is not None:
                    result.action, result.changed, result.error = "refused", False, str(gate_error)
                elif result.gate is not None and not result.gate.passed and not force:
                    result.action, result.changed = "refused", False
                    entry = self.audit.record(conn, AuditEntry(
                        self.name, version, "refused", to_stage=stage, from_stage=from_stage,
                        previous_version=holder, semver=result.semver, actor=actor, reason=reason, trigger=trigger,
                        gate_passed=False, gate_result=result.gate.to_dict()))
                    result.audit_id = entry.id
                else:
                    result.upload = self._prepare_deploy(version)
                    self._move_production(version, holder)
            elif stage == "staging":
                self._set_stage_tag(version, "staging")
                self.client.set_registered_model_alias(self.name, "staging", version)
            else:  # archived
                for alias in ALIASES:
                    if self.alias_version(alias) == version:
                        if alias == "production":
                            raise ValueError(f"v{version} holds production: promote or roll back to another "
                                             "version first, then archive it")
                        self.client.delete_registered_model_alias(self.name, alias)
                self._set_stage_tag(version, "archived")
            if result.action != "refused" and gate_error is None:
                gate_result = result.gate.to_dict() if result.gate else None
                if result.error:
                    gate_result = {**(gate_result or {}), "error": result.error}
                entry = self.audit.record(conn, AuditEntry(
                    self.name, version, "promote", to_stage=stage, from_stage=from_stage, previous_version=holder,
                    semver=result.semver, actor=actor, reason=reason, trigger=trigger, forced=force,
                    gate_passed=result.gate.passed if result.gate else None, gate_result=gate_result))
                result.audit_id = entry.id
        result.timings["audit_s"] = time.time() - t0
        if gate_error is not None:
            log.error("could not gate %s v%s: %s", self.name, version, gate_error)
            raise gate_error
        if result.action == "refused":
            log.warning("refused %s v%s: %s", self.name, version, result.gate.summary() if result.gate else "")
            raise GateFailed(result)
        log.info("%s", result.describe())
        self._deploy(result)
        return result

    def rollback(self, to_version: str | int | None = None, reason: str | None = None, actor: str | None = None,
                 trigger: str = "cli") -> PromotionResult:
        """Return production to the version that held it before (or to `to_version`); no gate, audited."""
        actor = actor or default_actor()
        with self.audit.locked(self.name) as conn:
            self._reconcile_locked(conn, trigger="reconcile")
            current = self.alias_version("production")
            stack = self.audit.production_stack(self.name, conn)
            if to_version is None:
                if len(stack) < 2:
                    raise ValueError(f"{self.name} has no earlier production version to roll back to "
                                     f"(production history: {stack or 'empty'}); name one with --to-version")
                target = stack[-2]
            else:
                target = str(to_version)
                self.version(target)
            if target == current:
                raise ValueError(f"v{target} already holds production; nothing to roll back")
            mv = self.version(target)
            upload = self._prepare_deploy(target)
            self._move_production(target, current)
            entry = self.audit.record(conn, AuditEntry(
                self.name, target, "rollback", to_stage="production", from_stage=mv.tags.get(STAGE_TAG),
                previous_version=current, semver=mv.tags.get("semver"), actor=actor, reason=reason, trigger=trigger))
        result = PromotionResult(self.name, target, "rollback", "production", mv.tags.get(STAGE_TAG), current,
                                 mv.tags.get("semver"), audit_id=entry.id, upload=upload)
        log.warning("%s", result.describe())
        self._deploy(result)
        return result

    # ------------------------------------------------ UI promotions, reconcile
    def _repair_stage_tags(self, production: str | None) -> list[str]:
        """Stage tags agree with the aliases: the production holder `production`, the staging
        holder `staging`, a former holder still tagged production `archived`. Returns what changed."""
        staging = self.alias_version("staging")
        fixed = []
        for mv in self.versions():
            v, tag = str(mv.version), mv.tags.get(STAGE_TAG, "none")
            want = None
            if v == production:
                want = "production" if tag != "production" else None
            elif tag == "production":
                want = "archived"
            elif v == staging and tag != "staging":
                want = "staging"
            if want is not None:
                self._set_stage_tag(v, want)
                fixed.append(f"stage tag of v{v} {tag} -> {want}")
        if fixed:
            log.warning("%s: repaired stage tags: %s", self.name, "; ".join(fixed))
        return fixed

    def _reconcile_locked(self, conn: Any, trigger: str, data: Any = None) -> PromotionResult | None:
        """If the production alias differs from the audited holder, someone moved it outside
        towerops (the MLflow UI): gate it now; keep it if it passes, revert it if not.

        Any error on the way (the gate cannot load the model or its evaluation set, the upload
        fails) is a refusal too: alias reverted, stage tags restored, the error audited. It never
        raises for the version's sake, so promote, rollback and reconcile always go on."""
        alias_holder = self.alias_version("production")
        stack = self.audit.production_stack(self.name, conn)
        audited = stack[-1] if stack else None
        if alias_holder == audited:
            repairs = self._repair_stage_tags(audited)
            if repairs and audited:
                return PromotionResult(self.name, audited, "repair", "production", changed=False, repairs=repairs)
            return None
        if alias_holder is None:  # alias deleted in the UI: put it back, production must not vanish
            if audited:
                self.client.set_registered_model_alias(self.name, "production", audited)
                log.warning("production alias of %s was deleted outside towerops; restored v%s", self.name, audited)
            repairs = self._repair_stage_tags(audited)
            if audited:
                return PromotionResult(self.name, audited, "repair", "production", changed=False,
                                       repairs=[f"production alias was deleted outside towerops; put back on v{audited}",
                                                *repairs])
            return None
        actor = "mlflow-ui"
        gate = None
        error = None
        upload = None
        mv = None
        try:
            mv = self.version(alias_holder)
            gate = self.run_gate(alias_holder, audited, data)
            if gate.passed:
                try:
                    upload = self._prepare_deploy(alias_holder)
                except Exception as exc:  # noqa: BLE001 - a version that can't be deployed can't hold production
                    error = f"deployment failed: {_first_line(exc)}"
                    log.error("v%s passed the gate but %s", alias_holder, error)
        except Exception as exc:  # noqa: BLE001 - a version that can't be gated can't hold production
            error = f"the gate could not evaluate v{alias_holder}: {_first_line(exc)}"
            log.error("%s: %s", self.name, error, exc_info=True)
        tags = mv.tags if mv is not None else {}
        if gate is not None and gate.passed and error is None:
            self._set_stage_tag(alias_holder, "production")
            if audited:
                self._set_stage_tag(audited, "archived")
            entry = self.audit.record(conn, AuditEntry(
                self.name, alias_holder, "promote", to_stage="production", from_stage=tags.get(STAGE_TAG),
                previous_version=audited, semver=tags.get("semver"), actor=actor,
                reason="production alias set outside towerops", trigger=trigger, gate_passed=True,
                gate_result=gate.to_dict()))
            result = PromotionResult(self.name, alias_holder, "promote", "production", tags.get(STAGE_TAG), audited,
                                     tags.get("semver"), gate=gate, audit_id=entry.id, upload=upload)
            log.info("accepted production alias set outside towerops: %s", result.describe())
            return result
        if audited:
            self.client.set_registered_model_alias(self.name, "production", audited)
        else:
            self.client.delete_registered_model_alias(self.name, "production")
        repairs = self._repair_stage_tags(audited)
        gate_result = gate.to_dict() if gate is not None else {"passed": False, "checks": []}
        if error:
            gate_result["error"] = error
        reason = "production alias set outside towerops; reverted" + (f"; {error}" if error else "")
        entry = self.audit.record(conn, AuditEntry(
            self.name, alias_holder, "refused", to_stage="production", from_stage=tags.get(STAGE_TAG),
            previous_version=audited, semver=tags.get("semver"), actor=actor, reason=reason, trigger=trigger,
            gate_passed=gate.passed if gate is not None else False, gate_result=gate_result))
        result = PromotionResult(self.name, alias_holder, "refused", "production", tags.get(STAGE_TAG), audited,
                                 tags.get("semver"), gate=gate, changed=False, audit_id=entry.id, error=error,
                                 reverted=True, repairs=repairs)
        log.error("reverted production alias of %s from v%s to %s: %s", self.name, alias_holder,
                  f"v{audited}" if audited else "none", error or (gate.summary() if gate else ""))
        return result

    def _converge_storage(self, holder: str | None) -> list[str]:
        """Storage (pointer, `model_versions` row) names the registry's production version `holder`
        (the audited one, read under the lock), or is made to: a crash after the audit commit, a lost
        deployment or a hand edit are repaired here. An alias moved since (not yet gated) is left to
        its own reconcile: storage never follows an alias the gate has not seen."""
        state_of = getattr(self.deploy_hook, "storage_state", None)
        if state_of is None or not getattr(getattr(self.deploy_hook, "config", None), "auto_deployment", True):
            return []
        if holder is not None and self.alias_version("production") != holder:
            log.info("%s: the production alias moved again; storage is brought in line by its reconcile", self.name)
            return []
        state = state_of(self.name)
        if holder is None:
            if state.get("pointer"):
                log.warning("%s: storage points at registry v%s but the registry has no production version; left "
                            "as it is (promote a version to repair)", self.name, state["pointer"])
            return []
        behind = [f"{what} v{state[what]}" if state[what] else f"{what} empty" for what in ("pointer", "row")
                  if what in state and str(state[what] or "") != holder]
        if not behind:
            return []
        deployment = self.deploy_hook(self.name, holder, self.version(holder))
        what = "; ".join(behind)
        if getattr(deployment, "superseded", False):
            return [f"storage ({what}) not moved: production changed meanwhile"]
        repair = f"storage re-pointed to production v{holder} (was: {what})"
        log.warning("%s: %s", self.name, repair)
        return [repair]

    def reconcile(self, trigger: str = "reconcile", data: Any = None) -> PromotionResult | None:
        """Catch up with alias changes whose webhook was dropped (gate, audit, deploy), repair
        stage tags, and bring storage in line with the registry's production. None: all in sync."""
        t0 = time.time()
        with self.audit.locked(self.name) as conn:
            result = self._reconcile_locked(conn, trigger, data)
            stack = self.audit.production_stack(self.name, conn)
        audited = stack[-1] if stack else None
        if result is not None:
            result.timings["audit_s"] = time.time() - t0
            self._deploy(result)
        repairs = self._converge_storage(audited)
        if repairs:
            if result is None:
                holder = audited or ""
                result = PromotionResult(self.name, holder, "repair", "production", changed=False)
            result.repairs.extend(repairs)
        return result

    def handle_alias_event(self, payload: Mapping[str, Any], trigger: str = "webhook") -> PromotionResult | None:
        """Process an MLflow webhook payload; only production alias events of this model matter.
        The alias is read back from MLflow (deliveries may be late or out of order)."""
        entity, action = payload.get("entity"), payload.get("action")
        data = payload.get("data") or {}
        if entity != "model_version_alias" or data.get("name") != self.name or data.get("alias") != "production":
            return None
        log.info("webhook: %s.%s %s@%s -> v%s", entity, action, self.name, data.get("alias"), data.get("version"))
        return self.reconcile(trigger=trigger)
