"""The TF.js export loads in Node with @tensorflow/tfjs (its own HTTP loader) and gives Keras' embeddings."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from support.helpers import REPO_ROOT

from ml.bundle.load import load_bundle
from ml.inference.tfjs import export_tfjs

pytestmark = pytest.mark.integration

NODE_DIR = REPO_ROOT / "tests" / "ml" / "inference" / "tfjs_node"


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("the TF.js test needs Node.js 18+ (apt-get install nodejs)")
    if not (NODE_DIR / "node_modules" / "@tensorflow" / "tfjs").exists():
        pytest.fail(f"@tensorflow/tfjs is not installed in {NODE_DIR}: run `make install` "
                    f"(npm ci --prefix {NODE_DIR.relative_to(REPO_ROOT)})")
    return node


@pytest.mark.parametrize("shard_bytes", [4 * 1024 * 1024, 4096], ids=["one-shard", "many-shards"])
def test_node_tfjs_embeddings_match_python(tiny_model_dir, tmp_path, shard_bytes) -> None:
    node = _node()
    paths = export_tfjs(tiny_model_dir, tmp_path / "tfjs", shard_bytes=shard_bytes)
    b = load_bundle(tiny_model_dir)
    rng = np.random.default_rng(5)
    x_user = rng.standard_normal((16, b.user_tower.input_shape[-1])).astype(np.float32)
    x_item = b.item_inputs()[:16]  # [content ; item-id vectors]
    (tmp_path / "inputs.json").write_text(json.dumps({"user_tower": x_user.tolist(), "item_tower": x_item.tolist()}))
    proc = subprocess.run([node, str(NODE_DIR / "embed.mjs"), str(paths["user_tower"].parent.parent),
                           str(tmp_path / "inputs.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["backend"] == "cpu" and out["tfjs"].startswith("4.")
    assert "LayerNormalization" in out["layers"]["user_tower"]
    user_js, item_js = np.asarray(out["user_tower"]), np.asarray(out["item_tower"])
    user_py = np.asarray(b.user_tower(x_user, training=False))
    assert user_js.shape == user_py.shape == (16, 32)
    assert np.abs(user_js - user_py).max() <= 1e-4
    assert np.abs(item_js - b.item_embeddings[:16]).max() <= 1e-4
    np.testing.assert_allclose(np.linalg.norm(item_js, axis=1), 1.0, atol=1e-5)
