"""``train.compile``: a method's networks under torch.compile train as they do eagerly."""

import pytest
from torch._dynamo.utils import counters

from disdis.cli import main
from disdis.train.checkpoint import list_checkpoints, load_checkpoint
from disdis.train.logger import read_csv_log
from train_standins import tiny_run_config, write_yaml


pytestmark = pytest.mark.usefixtures("one_torch_thread")

UNITS = {"num_units": 4, "token_dim": 8, "extractor_width": 4, "fc_hidden": [16], "mlp_hidden": [8, 8]}
# the demo's two stages and a VAE: no Skip Dropout, whose masks, drawn inside the compiled U-Net, would
# come from inductor's own generator; the autoencoder with every term of the demo's warm start. Each
# entry is a method's whole "method" section or, for the paper's, updates of the tiny config's sections
METHODS = {
    "disentangled_diffusion": {"unet": {"skip_dropout": 0.0}},
    "autoencoder": {"name": "autoencoder", "units": UNITS, "loss": {
        "beta": 2.0, "tc_weight": 1.0, "free_nats": 0.5, "gradient": "magnitude", "gradient_weight": 1.0,
        "hessian_weight": 0.02}},
    "beta_tcvae": {"name": "beta_tcvae", "resolution": 16, "latents": 4},
}


def _run(tmp_path, data, method: str, compile: bool) -> tuple[list[dict], dict]:
    name = "compiled" if compile else "eager"
    train = {"total_kimg": 0.064, "log_every_kimg": 0.016, "checkpoint_every_kimg": 0.064, "compile": compile}
    section = METHODS[method]
    cfg = tiny_run_config(data, tmp_path / name, train=train, **({} if "name" in section else section))
    if "name" in section:
        cfg["method"] = section
    assert main(["train", write_yaml(tmp_path / f"{name}.yaml", cfg)]) == 0
    tensors, _ = load_checkpoint(list_checkpoints(tmp_path / name / "checkpoints")[-1])
    return read_csv_log(tmp_path / name / "logs/train.csv"), tensors


@pytest.mark.parametrize("method", list(METHODS))
def test_compiled_networks_train_as_the_eager_ones(tmp_path, shapes3d_grid_npz, method):
    eager_rows, eager = _run(tmp_path, shapes3d_grid_npz, method, compile=False)
    counters.clear()
    rows, compiled = _run(tmp_path, shapes3d_grid_npz, method, compile=True)
    # the step's graphs compiled whole (at least one new: a network of the same shapes as one compiled
    # by an earlier test reuses its graph): the hooks and the probe ran eagerly between the steps, so
    # nothing broke a graph
    assert counters["stats"]["unique_graphs"] >= 1 and not counters["graph_break"]
    assert [r["step"] for r in rows] == [r["step"] for r in eager_rows] == [1, 2, 3, 4]
    # the same draws and arithmetic up to the order of fused sums: the losses agree (the weights too,
    # within what Adam's normalised steps make of gradients near 0, as in zero-initialised layers)
    for key in ("loss", *(k for k in eager_rows[0] if k in ("recon", "kl", "tc", "hessian"))):
        assert [r[key] for r in rows] == pytest.approx([r[key] for r in eager_rows], rel=1e-4, abs=1e-6), key
    assert compiled.keys() == eager.keys()  # compiled in place: no "_orig_mod." in the parameter names


def test_compile_of_a_method_without_networks_is_refused_before_any_work(tmp_path, shapes3d_grid_npz, capsys):
    cfg = tiny_run_config(shapes3d_grid_npz, tmp_path / "run", method={"name": "first_stage"},
                          first_stage={"kind": "vq", "base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                                       "codebook_size": 16}, train={"compile": True})
    assert main(["train", write_yaml(tmp_path / "fs.yaml", cfg)]) != 0
    assert "train.compile: FirstStageTraining names no networks to compile" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
