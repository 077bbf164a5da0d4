"""The batch stages, pickled between them as Ray hands them from process to process, give ``/infer``'s
labels to the voxel: the preprocessing's applied operations survive the hop and invert exactly."""

from __future__ import annotations

import pickle

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import CT
from lib.acceleration import cpu_precision
from lib.batch.model import ModelRun
from lib.batch.stages import Network, invert_and_write, preprocess
from lib.networks import wholebody_segresnet


@pytest.mark.parametrize("precision,skip_air", [("fp32", False), ("bf16", True)])
def test_stages_across_a_pickle_hop_equal_the_infer_task(tmp_path, precision, skip_air):
    from lib.configs.wholebody import WholeBodySegmentation

    if precision == "bf16" and not cpu_precision.bf16_units():
        pytest.skip("this CPU has no bfloat16 units: bf16 would serve fp32, tested by the first case")
    crop = tmp_path / "crop.nii.gz"
    if skip_air:  # 200 voxels of air beyond the body along x: windows there hold no body voxel
        ct = nib.load(str(CT)).slicer[:, :, 10:22]
        air = np.pad(np.asarray(ct.dataobj), ((0, 200), (0, 0), (0, 0)), constant_values=-1024)
        nib.save(nib.Nifti1Image(air, ct.affine), str(crop))
    else:
        nib.save(nib.load(str(CT)).slicer[30:94, 20:84, 10:22], str(crop))
    official = tmp_path / "model" / "wholeBody_ct_segmentation" / "models" / "model_lowres.pt"
    official.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(wholebody_segresnet().state_dict(), official)
    threads = torch.get_num_threads()

    run = ModelRun.create(str(tmp_path / "model"), highres=False, precision=precision, skip_air=skip_air)
    assert run.checkpoint == str(official) and run.precision == precision
    image = pickle.loads(pickle.dumps(preprocess(str(crop), run)))  # as Ray hands it to the network actor
    inferred = pickle.loads(pickle.dumps(Network(run, threads)(image)))
    out = tmp_path / "labels" / "crop.nii.gz"
    invert_and_write(inferred, str(out), run)

    config = WholeBodySegmentation()
    config.init("wholebody", str(tmp_path / "model"), {"download_weights": "false"}, None)
    request = {"image": str(crop), "highres": False, "device": "cpu", "result_extension": ".nii.gz", "precision": precision, "skip_air": skip_air}
    result, answer = config.infer()(request)
    assert answer["precision"] == precision and (answer["windows"]["skipped"] > 0) == skip_air, answer["windows"]
    ours, expected = nib.load(str(out)), nib.load(result)
    assert len(np.unique(np.asarray(expected.dataobj))) > 10, "random weights must give a varied label map"
    assert np.array_equal(np.asarray(ours.dataobj), np.asarray(expected.dataobj))
    np.testing.assert_allclose(ours.affine, expected.affine, atol=1e-5)
    assert not list(out.parent.glob("*.part")), "written whole or not at all"


def test_the_key_changes_with_the_checkpoint_content_and_params(tmp_path):
    path = tmp_path / "a.pt"
    path.write_bytes(b"weights one")
    first = ModelRun.create(str(tmp_path), highres=False, checkpoint=str(path))
    assert ModelRun.create(str(tmp_path), highres=False, checkpoint=str(path)).key == first.key
    assert ModelRun.create(str(tmp_path), highres=True, checkpoint=str(path)).key != first.key
    assert ModelRun.create(str(tmp_path), highres=False, checkpoint=str(path), overlap=0.5).key != first.key
    assert ModelRun.create(str(tmp_path), highres=False, checkpoint=str(path), skip_air=True).key != first.key
    if cpu_precision.bf16_units():  # the server's default, bf16, serves here; fp32 is another run
        assert first.precision == "bf16"
        assert ModelRun.create(str(tmp_path), highres=False, checkpoint=str(path), precision="fp32").key != first.key
    else:
        assert first.precision == "fp32"
    path.write_bytes(b"weights two")
    assert ModelRun.create(str(tmp_path), highres=False, checkpoint=str(path)).key != first.key
