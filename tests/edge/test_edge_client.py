"""Pieces of the edge client (edge/towerops-edge.js) in Node on hand-computed cases: top-k ties and
exclusions, the low-rank catalog, .npy files written by numpy, the user-input layout (the same as
ml.inference.edge_export.build_user_input), semantic-version compatibility, sha256."""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import numpy as np
import pytest
from support.helpers import REPO_ROOT

from ml.inference.edge_export import build_user_input

pytestmark = pytest.mark.integration

SCRIPT = REPO_ROOT / "tests" / "edge" / "client_checks.mjs"


def run_checks(tmp_path, inputs: dict) -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.fail("the edge client tests need Node.js 18+ (apt-get install nodejs)")
    if not (REPO_ROOT / "edge" / "node_modules" / "@tensorflow" / "tfjs").exists():
        pytest.fail("@tensorflow/tfjs is not installed in edge/: run `make install` (npm ci in edge/)")
    (tmp_path / "inputs.json").write_text(json.dumps(inputs))
    proc = subprocess.run([node, str(SCRIPT), str(tmp_path / "inputs.json")], capture_output=True, text=True,
                          timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


FEATS = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
LAYOUT = [{"kind": "mean", "of": "liked", "array": "feats"}, {"kind": "mean", "of": "noped", "array": "feats"},
          {"kind": "history"}, {"kind": "constant", "array": "const"}]


def test_client_pieces_on_hand_computed_cases(tmp_path) -> None:
    np.save(tmp_path / "f4.npy", np.array([[1.5, -2.0, 3.0], [0.0, 4.25, -1.0]], dtype=np.float32))
    np.save(tmp_path / "i8.npy", np.array([7, 0, 3, 12], dtype=np.int64))
    prep = {"user_dim": 8, "layout": LAYOUT,
            "arrays": {"feats": {"values": FEATS, "shape": [3, 2]}, "const": {"values": [9.0], "shape": [1]}}}
    # [[0, 2], [3, 0], [0, 0]] as CSR rows (indptr, indices, values)
    sparse = {"user_dim": 8, "layout": LAYOUT,
              "arrays": {"feats": {"csr": [[0, 1, 2, 2], [1, 0], [2.0, 3.0]], "shape": [3, 2]},
                         "const": {"values": [9.0], "shape": [1]}}}
    rows = [[1, 0], [0, 1], [1, 0], [0.5, 0.5], [-1, 0]]                       # scores for [1, 0]: 1, 0, 1, .5, -1
    out = run_checks(tmp_path, {
        "topk": [{"matrix": rows, "d": 2, "query": [1, 0], "k": 3},
                 {"matrix": rows, "d": 2, "query": [1, 0], "k": 3, "exclude": [1, 0, 0, 0, 0]},
                 {"matrix": rows, "d": 2, "query": [1, 0], "k": 9, "exclude": [0, 0, 0, 0, 1]}],
        # items [[1, 2, 0], [3, -1, 0]] in the basis e1, e2 of R^3; u = [.5, .5, .7]: scores 1.5 and 1.0
        "lowrank": [{"items": [[1, 2], [3, -1]], "basis": [[1, 0], [0, 1], [0, 0]], "r": 2, "u": [0.5, 0.5, 0.7],
                     "k": 2}],
        "npy": [str(tmp_path / "f4.npy"), str(tmp_path / "i8.npy")],
        "user_input": [{"prep": prep, "liked": [0, 2], "noped": [1]}, {"prep": prep, "liked": [], "noped": []},
                       {"prep": prep, "liked": [2, 2], "noped": []},
                       {"prep": sparse, "liked": [0, 1], "noped": [2]}],
        "compatible": [["2.0.0", "1.3.1"], ["1.4.0", "1.3.1"], ["v1.0.0", "1.9.2"]],
        "sha256": "abc",
    })
    assert out["topk"][0] == [[0, 1], [2, 1], [3, 0.5]]                        # a tie goes to the lower row
    assert out["topk"][1] == [[2, 1], [3, 0.5], [1, 0]]                        # excluded rows never come back
    assert out["topk"][2] == [[0, 1], [2, 1], [3, 0.5], [1, 0]]                # k past the catalog: all that remain
    assert out["lowrank"][0] == [[0, 1.5], [1, 1.0]]
    assert out["npy"][0] == {"shape": [2, 3], "values": [1.5, -2.0, 3.0, 0.0, 4.25, -1.0], "type": "Float32Array"}
    assert out["npy"][1] == {"shape": [4], "values": [7, 0, 3, 12], "type": "BigInt64Array"}
    assert out["npy_bad"]["code"] == "format" and "not a .npy file" in out["npy_bad"]["message"]

    # liked rows 0 and 2 -> mean [3, 4]; noped row 1 -> [3, 4]; log1p(2), log1p(1), (2+1)/(3+2); constant 9
    expected = [[3, 4, 3, 4, math.log1p(2), math.log1p(1), 0.6, 9],
                [0, 0, 0, 0, 0, 0, 0.5, 9],                                      # no swipes: zeros, like rate 1/2
                [5, 6, 0, 0, math.log1p(2), 0, 0.75, 9]]                         # a repeated like counts twice
    arrays = {"feats": np.array(FEATS, np.float32), "const": np.array([9.0], np.float32)}
    for got, want, case in zip(out["user_input"], expected, ([[0, 2], [1]], [[], []], [[2, 2], []])):
        np.testing.assert_allclose(got, want, rtol=1e-6)
        np.testing.assert_allclose(got, build_user_input(LAYOUT, arrays, *case), rtol=1e-6)  # Python twin
    # CSR rows: liked [0, 2] + [3, 0] -> mean [1.5, 1]; noped row 2 is all zeros
    np.testing.assert_allclose(out["user_input"][3], [1.5, 1, 0, 0, math.log1p(2), math.log1p(1), 0.6, 9], rtol=1e-6)

    major, minor, older = out["compatible"]
    assert major["code"] == "incompatible" and "v2.0.0 is major 2" in major["message"] and "v1.3.1" in major["message"]
    assert minor is None and older is None                                       # same major: compatible
    assert out["semver"] == {"major": 1, "minor": 2, "patch": 3, "text": "1.2.3"}
    assert out["semver_bad"]["code"] == "format" and "v1.2.0" in out["semver_bad"]["message"]
    assert out["sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert out["error_class"] is True
