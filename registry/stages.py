"""Stages staging → production → archived, carried by MLflow aliases (`staging`,
`production`) and a `stage` tag on each version (MLflow's stage API is deprecated).

Every change runs inside the audit log's per-model lock: read who holds production,
evaluate the gate, move the alias and tags, write the audit entry, commit. Whatever
path set the alias (towerops CLI, `mlflow run -e promote`, the MLflow UI via webhook, or
`reconcile`), the same code decides, so all paths end the same way.
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
TRIGGERS = ("cli", "mlflow_run", "webhook", "reconcile", "api", "main", "monitoring")


class GateFailed(RuntimeError):
    """The promotion gate refused a version; nothing was changed."""

    def __init__(self, result: "PromotionResult") -> None:
        self.result = result
        super().__init__(
            f"version {result.version} was not promoted to production: {result.gate.summary() if result.gate else ''}. "
            "Fix the model, or override with --force --reason '...'"
        )


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

    def describe(self) -> str:
        if not self.changed:
            return f"{self.model_name} v{self.version} already in {self.to_stage}; nothing changed"
        prev = f" (was v{self.previous_version})" if self.previous_version else ""
        gate = f"; {self.gate.summary()}" if self.gate else ""
        return f"{self.action}: {self.model_name} v{self.version} [{self.semver}] -> {self.to_stage}{prev}{gate}"


class ModelRegistry:
    """Registering, stage moves with the gate, rollback, reconcile and history for one model name."""

    def __init__(self, config: RegistryConfig | None = None, client: Any = None, audit: AuditLog | None = None,
                 deploy_hook: DeployHook | None = None, metrics_provider: MetricsProvider | None = None,
                 name: str | None = None) -> None:
        from mlflow import MlflowClient

        from ml.settings import ensure_tracking_uri

        ensure_tracking_uri()
        self.config = config or RegistryConfig()
        self.name = name or self.config.model_name
        self.client = client or MlflowClient()
        self.audit = audit or AuditLog()
        self.deploy_hook = deploy_hook
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
                "data_hash": tags.get("towerops.data_hash"), "run_id": run_id}
        with self.audit.locked(self.name) as conn:
            previous = None
            prev_meta = None
            existing = self.versions()
            for mv in existing:
                if "semver" in mv.tags:
                    sv = SemVer.parse(mv.tags["semver"])
                    if previous is None or sv > previous:
                        previous, prev_meta = sv, {**mv.tags, "run_id": mv.run_id}
            semver, bump, why = next_semver(previous, prev_meta, meta, {str(mv.run_id) for mv in existing})
            version_tags = {"semver": str(semver), "semver_bump": bump, STAGE_TAG: "none",
                            "data_hash": str(meta["data_hash"]), "embedding_dim": str(meta["embedding_dim"]),
                            "feature_schema_hash": str(meta["feature_schema_hash"]),
                            "data_source": run.data.params.get("data.source", "")}
            for k, v in (metrics or {}).items():
                version_tags[f"metric.{k}"] = f"{float(v):.6g}"
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

    # ------------------------------------------------------------- the gate
    def run_gate(self, candidate: str, production: str | None, data: Any = None) -> GateResult:
        versions = [candidate] + ([production] if production else [])
        metrics = self.metrics_provider(versions, data)
        return check_gate(metrics[candidate], metrics.get(production) if production else None, self.config.gate,
                          candidate, production)

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
        mv = self.version(version)
        with self.audit.locked(self.name) as conn:
            self._reconcile_locked(conn, trigger="reconcile", data=data)
            from_stage = mv.tags.get(STAGE_TAG, "none")
            holder = self.alias_version("production") if stage == "production" else self.alias_version(stage)
            result = PromotionResult(self.name, version, "promote", stage, from_stage, holder, mv.tags.get("semver"),
                                     forced=force)
            if stage == "production":
                if holder == version:
                    result.changed = False
                    return result
                result.gate = self.run_gate(version, holder, data)
                result.timings["gate_s"] = time.time() - t0
                if not result.gate.passed and not force:
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
            if result.action != "refused":
                entry = self.audit.record(conn, AuditEntry(
                    self.name, version, "promote", to_stage=stage, from_stage=from_stage, previous_version=holder,
                    semver=result.semver, actor=actor, reason=reason, trigger=trigger, forced=force,
                    gate_passed=result.gate.passed if result.gate else None,
                    gate_result=result.gate.to_dict() if result.gate else None))
                result.audit_id = entry.id
        result.timings["audit_s"] = time.time() - t0
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
    def _reconcile_locked(self, conn: Any, trigger: str, data: Any = None) -> PromotionResult | None:
        """If the production alias differs from the audited holder, someone moved it outside
        towerops (the MLflow UI): gate it now; keep it if it passes, revert it if not."""
        alias_holder = self.alias_version("production")
        stack = self.audit.production_stack(self.name, conn)
        audited = stack[-1] if stack else None
        if alias_holder == audited:
            return None
        if alias_holder is None:  # alias deleted in the UI: put it back, production must not vanish
            if audited:
                self.client.set_registered_model_alias(self.name, "production", audited)
                log.warning("production alias of %s was deleted outside towerops; restored v%s", self.name, audited)
            return None
        mv = self.version(alias_holder)
        gate = self.run_gate(alias_holder, audited, data)
        actor = "mlflow-ui"
        deploy_error = None
        upload = None
        if gate.passed:
            try:
                upload = self._prepare_deploy(alias_holder)
            except Exception as exc:  # noqa: BLE001 - a version that can't be deployed can't hold production
                deploy_error = f"deployment failed: {exc}"
                log.error("v%s passed the gate but %s", alias_holder, deploy_error)
        if gate.passed and deploy_error is None:
            self._set_stage_tag(alias_holder, "production")
            if audited:
                self._set_stage_tag(audited, "archived")
            entry = self.audit.record(conn, AuditEntry(
                self.name, alias_holder, "promote", to_stage="production", from_stage=mv.tags.get(STAGE_TAG),
                previous_version=audited, semver=mv.tags.get("semver"), actor=actor,
                reason="production alias set outside towerops", trigger=trigger, gate_passed=True,
                gate_result=gate.to_dict()))
            result = PromotionResult(self.name, alias_holder, "promote", "production", mv.tags.get(STAGE_TAG), audited,
                                     mv.tags.get("semver"), gate=gate, audit_id=entry.id, upload=upload)
            log.info("accepted production alias set outside towerops: %s", result.describe())
        else:
            if audited:
                self.client.set_registered_model_alias(self.name, "production", audited)
            else:
                self.client.delete_registered_model_alias(self.name, "production")
            entry = self.audit.record(conn, AuditEntry(
                self.name, alias_holder, "refused", to_stage="production", from_stage=mv.tags.get(STAGE_TAG),
                previous_version=audited, semver=mv.tags.get("semver"), actor=actor,
                reason=f"production alias set outside towerops; reverted{'; ' + deploy_error if deploy_error else ''}",
                trigger=trigger, gate_passed=gate.passed, gate_result=gate.to_dict()))
            result = PromotionResult(self.name, alias_holder, "refused", "production", mv.tags.get(STAGE_TAG), audited,
                                     mv.tags.get("semver"), gate=gate, changed=False, audit_id=entry.id)
            log.error("reverted production alias of %s from v%s to %s: %s", self.name, alias_holder,
                      f"v{audited}" if audited else "none", gate.summary())
        return result

    def reconcile(self, trigger: str = "reconcile", data: Any = None) -> PromotionResult | None:
        """Catch up with alias changes whose webhook was dropped; deploys what it accepts."""
        t0 = time.time()
        with self.audit.locked(self.name) as conn:
            result = self._reconcile_locked(conn, trigger, data)
        if result is not None:
            result.timings["audit_s"] = time.time() - t0
            self._deploy(result)
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
