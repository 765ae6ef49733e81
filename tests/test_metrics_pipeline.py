"""pipelines.metrics and `phenaki eval`'s metric flags: video sets, features, reports, weight-file errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipelines.media import encode_mp4_file
from pipelines.metrics import (
    MetricWeights,
    SetFeatures,
    SetOptions,
    extract,
    frame_prompts,
    image_frame_indices,
    metrics_line,
    paired_metrics,
    pairs_by_name,
    set_refs,
    set_report,
)


def _videos(folder, count: int, frames: int = 16, size: int = 32, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    return [
        encode_mp4_file(
            rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8), folder / f"{i}.mp4", fps=8
        )
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def i3d_file(tmp_path_factory):
    from safetensors.torch import save_file

    from modeling.i3d import InceptionI3d

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "i3d.safetensors"
    save_file(InceptionI3d(num_classes=400).state_dict(), str(path))
    return str(path)


def test_each_frame_gets_the_prompt_of_its_story_segment():
    record = {"prompts": ["a", "b"], "segments": [[0, 3], [3, 5]]}
    assert frame_prompts(record, 5) == ["a", "a", "a", "b", "b"]
    assert frame_prompts({"prompts": ["only"]}, 2) == ["only", "only"]
    assert frame_prompts({"prompts": []}, 2) is None


def test_sets_are_read_from_results_json_folders_and_clip_shards(tmp_path):
    files = _videos(tmp_path / "gen", 2, frames=2)
    results = tmp_path / "gen" / "results.json"
    results.write_text(json.dumps({"records": [{"prompts": ["p"], "file": f.name} for f in files]}))
    refs = set_refs(str(results))
    assert [r["file"] for r in refs] == [str(f.resolve()) for f in files] and refs[0]["prompts"] == ["p"]
    assert [r["file"] for r in set_refs(str(tmp_path / "gen"))] == [str(f) for f in files]
    shards = tmp_path / "clips"
    shards.mkdir()
    (shards / "manifest.json").write_text("{}")
    (shards / "shard-000000.tar").write_bytes(b"")
    assert set_refs(str(shards)) == [{"shard": str(shards / "shard-000000.tar")}]
    with pytest.raises(ValueError, match="not a results.json, a clip-shard directory"):
        set_refs(str(tmp_path / "clips" / "shard-000000.tar"))


def test_image_metrics_read_evenly_spaced_frames():
    assert image_frame_indices(16, 2).tolist() == [0, 15]
    assert image_frame_indices(9, 3).tolist() == [0, 4, 8]
    assert image_frame_indices(3, None).tolist() == image_frame_indices(3, 5).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="--image-frames must be >= 1"):
        SetOptions(image_frames=0).validate()


def test_clip_shards_give_their_videos_with_captions_and_skip_stills(tmp_path):
    from pipelines.media import encode_jpeg, encode_mp4
    from pipelines.metrics import decode_ref
    from pipelines.shards import write_shard

    video = np.random.default_rng(3).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    still = np.zeros((16, 16, 3), np.uint8)
    uri = str(tmp_path / "shard-000000.tar")
    write_shard(uri, [{"__key__": "v", "mp4": encode_mp4(video, 8), "txt": "a red square"},
                      {"__key__": "s", "jpg": encode_jpeg(still), "txt": "a still"}])  # fmt: skip
    (out,) = list(decode_ref({"shard": uri}))
    frames, prompts = out
    assert frames.shape == (3, 16, 16, 3) and prompts == ["a red square"] * 3


def test_videos_pair_by_file_name_only_when_every_one_has_a_partner():
    gen = [{"file": "/g/a.mp4"}, {"file": "/g/b.mp4"}]
    assert pairs_by_name(gen, [{"file": "/r/b.mp4"}, {"file": "/r/a.mp4"}]) == [
        ("/g/a.mp4", "/r/a.mp4"),
        ("/g/b.mp4", "/r/b.mp4"),
    ]
    assert pairs_by_name(gen, [{"file": "/r/a.mp4"}]) is None
    assert pairs_by_name(gen, [{"shard": "/r/shard-000000.tar"}]) is None


def test_weight_files_are_checked_before_anything_runs(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--i3d .*nope.pt.*rgb_imagenet.pt"):
        MetricWeights(i3d=str(tmp_path / "nope.pt")).validate()
    with pytest.raises(FileNotFoundError, match=r"--clip .*no such directory.*save_pretrained"):
        MetricWeights(clip=str(tmp_path / "clip")).validate()
    (tmp_path / "vgg.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="LPIPS needs both"):
        MetricWeights(lpips_vgg=str(tmp_path / "vgg.pth")).validate()
    assert not MetricWeights().validate().any


def test_eval_cli_names_the_flag_the_file_and_the_source_of_a_missing_weight_file(tmp_path, capsys):
    from jobs.cli import main

    _videos(tmp_path / "v", 1, frames=2)
    argv = ["eval", "--videos", str(tmp_path / "v"), "--inception", str(tmp_path / "pt_inception.pth")]
    assert main(argv) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1
    err = err[0]
    assert (
        len(err.splitlines()) == 1
        and "--inception" in err
        and "pt_inception.pth" in err
        and "pytorch-fid" in err
    )


def test_a_weight_file_of_the_wrong_network_is_refused_before_ray_starts(tmp_path, monkeypatch):
    import jobs.runtime
    from modeling.weights import WeightsFileError

    ray_starts = []
    monkeypatch.setattr(jobs.runtime, "init_ray", lambda *a, **k: ray_starts.append(1))
    torch.save({"fc.bias": torch.zeros(1008)}, tmp_path / "not_inception.pth")  # a head, no trunk
    refs = [{"file": str(f)} for f in _videos(tmp_path / "v", 1, frames=2)]
    with pytest.raises(WeightsFileError, match=r"not_inception\.pth is not a pytorch-fid FID Inception-v3"):
        extract(
            {"generated": refs}, MetricWeights(inception=str(tmp_path / "not_inception.pth")), SetOptions()
        )
    assert ray_starts == []


def test_an_undecodable_video_is_left_out_and_named(tmp_path):
    good = _videos(tmp_path / "v", 1, frames=2)[0]
    bad = tmp_path / "v" / "bad.mp4"
    bad.write_bytes(b"not a video")
    feats = extract(
        {"generated": [{"file": str(bad)}, {"file": str(good)}]}, MetricWeights(), SetOptions(workers=0)
    )
    generated = feats["generated"]
    assert generated.videos == 1 and generated.frames == 2 and len(generated.undecodable) == 1
    assert "bad.mp4" in set_report(generated, None)["notes"][0]


def test_set_report_from_streamed_features():
    """FID of two Gaussian feature sets, IS of one-hot probabilities, CLIP score means, no weights needed."""
    rng = np.random.default_rng(0)
    gen, real = SetFeatures(), SetFeatures()
    for feats, shift in ((gen, 0.0), (real, 1.0)):
        for _ in range(4):
            pool = rng.normal(size=(5, 16)) + shift
            probs = np.eye(1008)[rng.integers(0, 10, size=5)]
            row = {
                "frames": 5,
                "error": "",
                "i3d": _npy(np.zeros(0)),  # an empty I3D feature: the clip is too short for FVD
                "pool": _npy(pool),
                "probs": _npy(probs),
                "clip": _npy(np.full(5, 30.0)),
            }
            feats.add_row(row)
    report = set_report(gen, real)
    assert report["videos"] == report["real_videos"] == 4 and report["frames"] == 20
    assert report["fid"] > 16 * 0.5  # the means differ by 1 in every one of 16 dimensions
    assert 1 < report["inception_score"]["mean"] <= 10 and report["clip_score"] == pytest.approx(30.0)
    assert "fvd" not in report and any("FVD" in n for n in report["notes"])  # 5-frame clips: no I3D features
    line = metrics_line(report)
    assert line.startswith("FID ") and "IS " in line and "CLIP score 30.00" in line


def _npy(a: np.ndarray) -> bytes:
    from pipelines.shards import npy_bytes

    return npy_bytes(a)


def test_features_in_process_give_fvd_zero_for_a_set_against_itself(tmp_path, i3d_file):
    files = _videos(tmp_path / "v", 2)
    refs = [{"file": str(f)} for f in files]
    feats = extract({"generated": refs, "real": refs}, MetricWeights(i3d=i3d_file), SetOptions(workers=0))
    report = set_report(feats["generated"], feats["real"])
    assert feats["generated"].count("i3d") == 2 and report["fvd"] == pytest.approx(0.0, abs=1e-6)


def test_paired_lpips_from_weight_files_is_zero_only_for_identical_clips(tmp_path):
    from pipelines.metrics import load_networks
    from tests.test_feature_networks import lpips_files

    lpips_files(tmp_path)
    weights = MetricWeights(
        lpips_vgg=str(tmp_path / "vgg16-397923af.pth"), lpips_lin=str(tmp_path / "vgg.pth")
    )
    nets = load_networks(weights.validate())
    rng = np.random.default_rng(2)
    clips = rng.integers(0, 256, (2, 2, 16, 16, 3), dtype=np.uint8)
    assert paired_metrics(clips, clips, nets)["lpips"] == pytest.approx(0.0, abs=1e-6)
    assert paired_metrics(clips, 255 - clips, nets)["lpips"] > 0


def test_paired_metrics_of_outputs_against_their_clips():
    rng = np.random.default_rng(1)
    clips = rng.integers(0, 256, (3, 2, 16, 16, 3), dtype=np.uint8)
    same = paired_metrics(clips, clips)
    assert same["psnr_db"] == pytest.approx(100.0) and same["ssim"] == pytest.approx(1.0)
    noisy = np.clip(clips.astype(int) + rng.integers(-20, 20, clips.shape), 0, 255).astype(np.uint8)
    worse = paired_metrics(clips, noisy)
    assert 20 < worse["psnr_db"] < 40 and 0 < worse["ssim"] < 1


@pytest.mark.ray
def test_eval_cli_computes_every_metric_on_ray_data_with_small_random_networks(
    tmp_path, i3d_file, ray_local, capsys
):
    """`phenaki eval` end to end on a Ray Data actor pool: random-init I3D, FID Inception, LPIPS and a tiny
    CLIP, each read from a file as a user's weights would be; a set against itself has FVD and FID ~ 0."""
    from jobs.cli import main
    from modeling.inception import FIDInceptionV3
    from tests.test_feature_networks import lpips_files, tiny_clip_dir

    torch.manual_seed(0)
    inception = tmp_path / "pt_inception.pth"
    torch.save(FIDInceptionV3().state_dict(), inception)
    lpips_files(tmp_path)
    clip = tiny_clip_dir(tmp_path / "clip")
    files = _videos(tmp_path / "videos", 2, frames=16, size=32)
    results = tmp_path / "videos" / "results.json"
    results.write_text(json.dumps([{"prompts": ["a red square moving left"], "file": f.name} for f in files]))
    argv = ["eval", "--results", str(results), "--real", str(tmp_path / "videos"), "--i3d", i3d_file,
            "--inception", str(inception), "--clip", str(clip), "--lpips-vgg", str(tmp_path / "vgg16-397923af.pth"),
            "--lpips-lin", str(tmp_path / "vgg.pth"), "--metric-workers", "1", "--image-frames", "2", "--out", str(tmp_path / "eval.json")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.index('"clean"') < out.index("metrics: FVD")  # the detector's figures come first
    report = json.loads((tmp_path / "eval.json").read_text())
    metrics = report["metrics"]
    assert report["num_videos"] == 2 and metrics["videos"] == metrics["real_videos"] == 2
    assert metrics["fvd"] == pytest.approx(0.0, abs=1e-4) and metrics["fid"] == pytest.approx(0.0, abs=1e-4)
    for value in (
        metrics["inception_score"]["mean"],
        metrics["real_inception_score"]["mean"],
        metrics["clip_score"],
    ):
        assert np.isfinite(value) and value >= 0
    paired = metrics["paired"]
    assert (
        paired["pairs"] == 2
        and paired["psnr_db"] == pytest.approx(100.0)
        and paired["ssim"] == pytest.approx(1.0)
    )
    assert paired["lpips"] == pytest.approx(0.0, abs=1e-6)


def test_eval_checkpoint_scores_its_generated_videos_with_clip(tmp_path, capsys):
    """`phenaki eval --checkpoint` writes eval-videos/results.json (videos with their prompts), and with --clip
    reports the CLIP score of that set after the detector's figures."""
    from jobs.cli import main
    from modeling.generation import write_debug_checkpoint
    from tests.test_feature_networks import tiny_clip_dir

    ckpt = write_debug_checkpoint(tmp_path / "transformer", num_frames=9, sampling={"steps": 2})
    clip = tiny_clip_dir(tmp_path / "clip")
    argv = ["eval", "--checkpoint", str(ckpt), "--seeds", "1", "--clip", str(clip), "--metric-workers", "0",
            "--image-frames", "1", "--out", str(tmp_path / "eval.json")]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    records = json.loads((ckpt / "eval-videos" / "results.json").read_text())["records"]
    videos = report["held-out"]["num_videos"] + report["purple"]["num_videos"]
    assert len(records) == videos and all((ckpt / "eval-videos" / r["file"]).is_file() for r in records)
    metrics = report["metrics"]
    assert metrics["videos"] == videos and metrics["frames"] == 9 * videos
    assert 0 <= metrics["clip_score"] <= 100 and "fvd" not in metrics
    assert "metrics: CLIP score" in capsys.readouterr().out
