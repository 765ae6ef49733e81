"""The metrics' feature networks load the published weight layouts from local files, refuse anything else with
an error naming the file and where such weights come from, and compute what their papers define.

No pretrained weights exist on CI machines: each network is built with random weights, saved in the published
file's layout, and loaded back through the same `from_file` path a user's file takes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

from modeling.clip_score import CLIPScorer, clip_pixels
from modeling.inception import FIDInceptionV3
from modeling.lpips import LPIPS
from modeling.text_encoder import _minilm_path
from modeling.weights import WeightsFileError, WeightsFileMissing


class _Payload:
    def __reduce__(self):
        return (print, ("this ran",))


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(FIDInceptionV3().state_dict(), path)
    return path


def test_fid_inception_loads_its_layout_and_gives_pool3_and_logits(inception_file):
    net = FIDInceptionV3.from_file(inception_file)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    # every tensor of the file is used, with the names pytorch-fid's file has (torchvision's Inception-v3 names)
    state = torch.load(inception_file, weights_only=True)
    assert set(state) == set(net.state_dict())
    assert {"Conv2d_1a_3x3.conv.weight", "Mixed_7c.branch3x3dbl_3b.bn.running_var", "fc.weight"} <= set(state)
    assert (
        sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k)
        == 23_850_960
    )
    pool3, logits = net(torch.rand(2, 3, 40, 56))  # any size: resized to 299 inside
    assert pool3.shape == (2, 2048) and logits.shape == (2, 1008)
    assert (pool3 >= 0).all()  # a mean of ReLU outputs


def test_weight_files_that_are_not_the_network_are_refused(inception_file, tmp_path):
    with pytest.raises(WeightsFileMissing, match=r"nope\.pth.*pytorch-fid"):
        FIDInceptionV3.from_file(tmp_path / "nope.pth")
    state = torch.load(inception_file, weights_only=True)
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "wrapped.pth")
    with pytest.raises(WeightsFileError, match=r"wrapped\.pth.*missing keys"):
        FIDInceptionV3.from_file(tmp_path / "wrapped.pth")
    (tmp_path / "payload.pth").write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(WeightsFileError, match=r"payload\.pth is not a readable"):
        FIDInceptionV3.from_file(tmp_path / "payload.pth")


def lpips_files(tmp_path, seed=0):
    torch.manual_seed(seed)
    net = LPIPS()
    for lin in net.lins:  # the published heads are non-negative
        lin.model[1].weight.data.abs_()
    vgg = {k: v for k, v in net.net.state_dict().items()}
    vgg["classifier.0.weight"] = torch.zeros(4, 4)  # torchvision's file also holds the classifier
    torch.save(vgg, tmp_path / "vgg16-397923af.pth")
    torch.save(
        {f"lin{i}.model.1.weight": lin.model[1].weight for i, lin in enumerate(net.lins)},
        tmp_path / "vgg.pth",
    )
    return net


def test_lpips_is_a_distance_in_the_published_layout(tmp_path):
    reference = lpips_files(tmp_path)
    net = LPIPS.from_files(tmp_path / "vgg16-397923af.pth", tmp_path / "vgg.pth")
    a, b = torch.rand(3, 3, 32, 32) * 2 - 1, torch.rand(3, 3, 32, 32) * 2 - 1
    d = net(a, b)
    assert d.shape == (3,) and (d > 0).all()
    assert torch.allclose(net(a, a), torch.zeros(3)) and torch.allclose(net(b, a), d)
    assert torch.allclose(reference.eval()(a, b), d)  # the file round trip keeps every weight
    # one layer by hand: sum_c w_c * mean_hw (f_a/|f_a| - f_b/|f_b|)^2 summed over the five layers
    expected = torch.zeros(3)
    for lin, fa, fb in zip(net.lins, net.net(a), net.net(b), strict=True):
        ua, ub = fa / (fa.norm(dim=1, keepdim=True) + 1e-10), fb / (fb.norm(dim=1, keepdim=True) + 1e-10)
        expected += ((ua - ub) ** 2 * lin.model[1].weight.view(1, -1, 1, 1)).sum(1).mean((1, 2))
    assert torch.allclose(d, expected, rtol=1e-5)
    with pytest.raises(WeightsFileMissing, match=r"lpips.*vgg\.pth"):
        LPIPS.from_files(tmp_path / "vgg16-397923af.pth", tmp_path / "missing" / "vgg.pth")


def tiny_clip_dir(path):
    """A random 2-layer CLIP saved as transformers saves one, with the MiniLM WordPiece tokenizer (the only
    tokenizer on the machine; [SEP] = 102 ends the text, as CLIP's end token does)."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": 30522, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 32, "eos_token_id": 102},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )  # fmt: skip
    CLIPModel(config).save_pretrained(str(path))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(_minilm_path() / name, path / name)
    return path


def test_clip_score_from_a_local_directory(tmp_path):
    scorer = CLIPScorer.from_dir(tiny_clip_dir(tmp_path / "clip"))
    images = torch.rand(3, 3, 48, 64)
    texts = ["a red circle", "a blue square moving left", "a red circle"]
    scores = scorer.score(images, texts)
    assert scores.shape == (3,) and ((scores >= 0) & (scores <= 100)).all()
    # by definition: 100 * max(cos, 0) of the projected embeddings
    tokens = scorer.tokenizer(texts, padding=True, return_tensors="pt")
    image = scorer.model.get_image_features(pixel_values=clip_pixels(images, 32))
    text = scorer.model.get_text_features(**tokens)
    image = image if isinstance(image, torch.Tensor) else image.pooler_output
    text = text if isinstance(text, torch.Tensor) else text.pooler_output
    expected = (100 * torch.nn.functional.cosine_similarity(image, text)).clamp(min=0)
    assert torch.allclose(scores, expected, atol=1e-4)
    with pytest.raises(WeightsFileMissing, match="CLIP model directory"):
        CLIPScorer.from_dir(tmp_path / "none")


def test_clip_pixels_crops_the_centre_of_the_shorter_side():
    images = torch.zeros(1, 3, 20, 40)
    images[..., 10:30] = 1.0  # a bright centre band the crop keeps whole
    x = clip_pixels(images, 16, mean=(0, 0, 0), std=(1, 1, 1))
    assert x.shape == (1, 3, 16, 16) and x.mean() > 0.9


def test_torchvision_next_to_the_cpu_torch_imports_and_matches_our_layouts():
    """The bench extra installs PyPI's torchvision, a CUDA build: importing our package first keeps it (and
    transformers, which imports it) importable, and its Inception-v3 / VGG16 have our key names and shapes."""
    code = (
        "import modeling, torchvision, json\n"
        "from transformers import CLIPModel, T5EncoderModel\n"
        "from modeling.inception import FIDInceptionV3\n"
        "from modeling.losses import VGGFeatures\n"
        "tv = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)\n"
        "ours = FIDInceptionV3().state_dict()\n"
        "vgg = torchvision.models.vgg16(weights=None).state_dict()\n"
        "print(json.dumps([{k: list(v.shape) for k, v in tv.state_dict().items()} == "
        "{k: list(v.shape) for k, v in ours.items()}, "
        "all(list(vgg[k].shape) == list(v.shape) for k, v in VGGFeatures().state_dict().items())]))\n"
    )
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip(
            "torchvision is not installed (it comes with the bench extra, which scripts/install.sh installs)"
        )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [True, True]


def _fid_reference_inception():
    """pytorch-fid's construction, as its `fid_inception_v3` builds it: torchvision's Inception-v3 with the TF
    graph's pools patched in (the oracle our layer-by-layer port is held against)."""
    import torch.nn.functional as F
    from torchvision.models import inception as tvi

    def avg(x):
        return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)

    class A(tvi.InceptionA):
        def forward(self, x):
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(avg(x))], 1)

    class C(tvi.InceptionC):
        def forward(self, x):
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            d = self.branch7x7dbl_2(self.branch7x7dbl_1(x))
            d = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(d)))
            return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(avg(x))], 1)

    class E(tvi.InceptionE):
        def __init__(self, cin, max_pool):
            super().__init__(cin)
            self.max_pool = max_pool

        def forward(self, x):
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
            pooled = F.max_pool2d(x, 3, 1, 1) if self.max_pool else avg(x)
            return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)

    net = tvi.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=True)
    net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = A(192, 32), A(256, 64), A(288, 64)
    net.Mixed_6b, net.Mixed_6c, net.Mixed_6d, net.Mixed_6e = (
        C(768, 128),
        C(768, 160),
        C(768, 160),
        C(768, 192),
    )
    net.Mixed_7b, net.Mixed_7c = E(1280, False), E(2048, True)
    for m in net.modules():  # running statistics away from the identity, so BN is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def _fid_reference_pool3(net, images):
    x = 2 * images - 1  # pytorch-fid: (0, 1) -> (-1, 1); 299 x 299 already
    for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                 "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                 "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):  # fmt: skip
        x = getattr(net, name)(x)
    return x.mean(dim=(2, 3))


def test_fid_inception_computes_what_pytorch_fid_computes():
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip(
            "torchvision is not installed (it comes with the bench extra, which scripts/install.sh installs)"
        )

    torch.manual_seed(0)
    reference = _fid_reference_inception()
    ours = FIDInceptionV3()
    ours.load_state_dict(reference.state_dict())
    images = torch.rand(2, 3, 299, 299)
    with torch.no_grad():
        pool3, logits = ours.eval()(images)
        expected = _fid_reference_pool3(reference, images)
        assert torch.allclose(pool3, expected, atol=1e-6) and torch.allclose(
            logits, reference.fc(expected), atol=1e-5
        )


def test_lpips_computes_what_the_lpips_package_computes_with_its_published_heads(tmp_path):
    """The lpips package (bench extra) ships the v0.1 VGG heads: loaded through our path they give the package's
    distances (its trunk random here: VGG16's ImageNet weights are not on the machine)."""
    if importlib.util.find_spec("lpips") is None:
        pytest.skip("the lpips package is not installed (it comes with the bench extra, scripts/install.sh)")
    import lpips

    torch.manual_seed(0)
    reference = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    slices = [reference.net.slice1, reference.net.slice2, reference.net.slice3, reference.net.slice4]
    layers = [m for s in [*slices, reference.net.slice5] for m in s]
    vgg = {}
    for i, layer in enumerate(layers):  # the slices keep torchvision's `features` indices, in order
        if isinstance(layer, torch.nn.Conv2d):
            vgg[f"features.{i}.weight"], vgg[f"features.{i}.bias"] = layer.weight.data, layer.bias.data
    torch.save(vgg, tmp_path / "vgg16.pth")
    heads = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "vgg.pth")
    ours = LPIPS.from_files(tmp_path / "vgg16.pth", heads)
    a, b = torch.rand(4, 3, 64, 64) * 2 - 1, torch.rand(4, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(ours(a, b), reference(a, b).flatten(), rtol=1e-5)
