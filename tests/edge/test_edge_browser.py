"""The edge client in real headless Chromium, against a deployment made by `towerops deploy`
and served by `towerops edge serve`: swiping in the demo page gives RealtimeInferenceEngine's
top-10 for the same swipes; tampered files and a new major version are refused on screen."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from support.edge import BUCKET, MODEL, copy_deployment

pytestmark = [pytest.mark.slow, pytest.mark.integration]

READY = "body[data-state=ready], body[data-state=error]"


def open_demo(context, url: str):
    """(page, uncaught page errors): a new page on the demo, loaded (ready or showing an error)."""
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.wait_for_selector(READY, timeout=120_000)
    return page, errors


def page_state(page) -> tuple[list[str], list[str], list[tuple[str, float]]]:
    """(liked ids, noped ids, [(item id, score)] of the shown recommendations) read off the page."""
    history = page.eval_on_selector_all("#history li", "els => els.map(e => [e.dataset.itemId, e.dataset.label])")
    recs = page.eval_on_selector_all("#rec-list li", "els => els.map(e => [e.dataset.itemId, Number(e.dataset.score)])")
    liked = [i for i, label in history if label == "liked"]
    noped = [i for i, label in history if label == "noped"]
    return liked, noped, [(i, float(s)) for i, s in recs]


def swipe(page, step: str) -> tuple[str, str]:
    """Do one swipe; `step` is "like"/"nope" (the card) or "rec<N>:like|nope" (a recommendation's button)."""
    n = int(page.eval_on_selector("body", "b => Number(b.dataset.swipes || 0)"))
    if step.startswith("rec"):
        pos, label = step[3:].split(":")
        row = page.locator(f"#rec-list li:nth-child({pos})")
        item = row.get_attribute("data-item-id")
        row.locator(".like-it" if label == "like" else ".nope-it").click()
    else:
        item, label = page.get_attribute("#card", "data-item-id"), step
        page.click(f"#{step}")
    page.wait_for_function(f"Number(document.body.dataset.swipes) === {n + 1}")
    return item, "liked" if label == "like" else "noped"


def test_demo_swipes_give_the_engines_top10(edge_serve, chromium, tiny_model_dir, artifacts_dir) -> None:
    from ml.inference.engine import RealtimeInferenceEngine

    engine = RealtimeInferenceEngine(tiny_model_dir, scoring="exact", lowrank=False)
    page, errors = open_demo(chromium, edge_serve)
    assert page.get_attribute("body", "data-state") == "ready", page.inner_text("#error")
    about = page.inner_text("#about")
    assert f"{MODEL} v1.0.0" in about and f"{len(engine.bundle.item_ids)} items" in about
    assert page.eval_on_selector_all("#rec-list li", "els => els.length") == 0  # nothing before a swipe

    previous: list[tuple[str, float]] = []
    for step in ("like", "like", "nope", "rec3:like", "nope", "rec1:nope", "like"):
        item, label = swipe(page, step)
        liked, noped = page_state(page)[:2]
        assert item in (liked if label == "liked" else noped)                  # the page did what was clicked
        _, _, shown = page_state(page)
        want = engine.get_recommendations(liked_items=liked, noped_items=noped, top_k=10)
        assert [i for i, _ in shown] == [w["item_id"] for w in want], (step, liked, noped)
        worst = max(abs(s - w["score"]) for (_, s), w in zip(shown, want))
        assert worst <= 1e-4, (step, worst)
        assert not {i for i, _ in shown} & set(liked + noped)                 # swiped items are excluded
        assert shown != previous                                             # each swipe re-ranks
        previous = shown
    assert len(liked) + len(noped) == 7 and len(liked) >= 3 and len(noped) >= 3
    assert "Re-ranked 200 items in" in page.inner_text("#timing")
    assert page.is_hidden("#error") and errors == []

    shot = artifacts_dir / "edge-demo.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"edge demo screenshot: {shot}")
    assert shot.stat().st_size > 10_000
    page.close()


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-4])


def _swap_file_and_manifest(version_dir: Path) -> None:
    """A consistent forgery of one file: new bytes and the manifest updated to match (the pointer catches it)."""
    target = version_dir / "embeddings" / "item_embeddings.npy"
    _flip_byte(target)
    manifest_path = version_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["embeddings/item_embeddings.npy"]["sha256"] = hashlib.sha256(target.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


TAMPERS = {
    "embedding-bytes": (lambda v: _flip_byte(v / "embeddings" / "item_embeddings.npy"),
                        ["embeddings/item_embeddings.npy", "sha256"]),
    "truncated-tower-shard": (lambda v: _truncate(v / "tfjs" / "user_tower" / "group1-shard1of1.bin"),
                              ["tfjs/user_tower/group1-shard1of1.bin", "the manifest records"]),
    "forged-manifest": (_swap_file_and_manifest, ["manifest.json", "production.json"]),
}


@pytest.mark.parametrize("tamper", sorted(TAMPERS))
def test_a_tampered_deployment_is_refused_with_the_file_named(tamper, deployment, chromium, tmp_path,
                                                              artifacts_dir) -> None:
    from pipelines.edge_server import EdgeServer

    root = copy_deployment(deployment, tmp_path)
    change, expected = TAMPERS[tamper]
    change(root / BUCKET / MODEL / "v1.0.0")
    server = EdgeServer(root / BUCKET, MODEL, port=0)
    server.start_background()
    try:
        page, errors = open_demo(chromium, server.url)
        assert page.get_attribute("body", "data-state") == "error"
        assert page.get_attribute("#error", "data-code") == "tampered"
        message = page.inner_text("#error")
        for text in expected:
            assert text in message, message
        assert "refusing" in message and "Redeploy" in message                 # says what to do
        assert page.is_disabled("#like") and page.eval_on_selector_all("#rec-list li", "els => els.length") == 0
        assert errors == []                                                    # refused, not crashed
        if tamper == "embedding-bytes":
            shot = artifacts_dir / "edge-demo-tampered.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"edge demo tampered screenshot: {shot}")
        page.close()
    finally:
        server.shutdown()
        server.server_close()


def test_a_new_minor_is_taken_and_a_new_major_refused(deployment, chromium, tiny_model_dir, tmp_path) -> None:
    from pipelines.edge_server import EdgeServer
    from registry.deploy.config import DeployConfig
    from registry.deploy.deployer import SupabaseDeployer
    from registry.deploy.storage.local import LocalFolderBackend

    root = copy_deployment(deployment, tmp_path)
    deployer = SupabaseDeployer(DeployConfig(backend="local", local_dir=str(root)),
                                backend=LocalFolderBackend(root, BUCKET), model_name=MODEL, use_table=False)
    server = EdgeServer(root / BUCKET, MODEL, port=0)
    server.start_background()
    try:
        page, errors = open_demo(chromium, server.url)
        assert f"{MODEL} v1.0.0" in page.inner_text("#about")
        swipe(page, "like")
        before = page_state(page)[2]

        deployer.deploy_model(model_dir=tiny_model_dir, version="v1.1.0")       # same embedding space
        page.click("#refresh")
        page.wait_for_function("document.getElementById('about').textContent.includes('v1.1.0')")
        assert page.is_hidden("#error")
        assert page_state(page)[2] == before                                  # same model, same ranking

        deployer.deploy_model(model_dir=tiny_model_dir, version="v2.0.0")       # a new major: a new space
        page.click("#refresh")
        page.wait_for_selector("#error:not([hidden])")
        assert page.get_attribute("#error", "data-code") == "incompatible"
        message = page.inner_text("#error")
        assert "v2.0.0 is major 2" in message and "v1.1.0" in message and "load v2.0.0 whole" in message
        assert f"{MODEL} v1.1.0" in page.inner_text("#about")                  # still serving what it holds
        swipe(page, "nope")                                                    # and still working
        assert len(page_state(page)[2]) == 10 and errors == []
        page.close()
    finally:
        server.shutdown()
        server.server_close()
