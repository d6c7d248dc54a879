"""Real images as CLIP sees them: open_clip's evaluation pixels, crops from the original image, safe paths,
one clear error per broken file, and the evaluation cache."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from complora.data.evalcache import MANIFEST_FILE, PIXELS_FILE, build_eval_cache, open_eval_cache
from complora.data.images import EvalTransform, decode_rgb, image_paths, normalize
from complora.data.prepare import prepare_custom
from complora.data.testset import DatasetRef, DecodedPixels, open_test_split
from complora.data.training import TrainingImages, draw_crop
from complora.errors import ComploraError
from image_fixtures import broken_images, unusual_images


@pytest.fixture(scope="module")
def vit_b16() -> tuple[torch.nn.Module, object]:
    """ViT-B-16 (random weights) and the preprocess_val open_clip builds for it: 224 px, bicubic, centre crop."""
    model, _, preprocess_val = open_clip.create_model_and_transforms("ViT-B-16")
    return model, preprocess_val


@pytest.fixture(scope="module")
def awkward(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return unusual_images(tmp_path_factory.mktemp("awkward"))


def _split_file(folder: Path, names: list[str]) -> Path:
    entries = [[name, index % 2, f"class{index % 2}"] for index, name in enumerate(names)]
    path = folder / "split.json"
    path.write_text(json.dumps({"train": entries, "val": entries, "test": entries}))
    return path


def test_evaluation_pixels_are_open_clips_preprocess_val(vit_b16, awkward: dict[str, Path]):
    model, preprocess_val = vit_b16
    transform = EvalTransform.for_model(model)
    assert transform.size == (224, 224) and transform.describe()["pixel_stages"][0].startswith("Resize(size=224")
    for name, path in awkward.items():
        ours = normalize(torch.from_numpy(transform.load(path))[None], *transform.normalization())[0]
        # Bit for bit: PIL's stages give uint8 either way, and ToTensor + Normalize are the same float ops.
        assert torch.equal(ours, preprocess_val(Image.open(path))), name


def test_a_non_square_photo_is_resized_by_its_shorter_side_and_centre_cropped(vit_b16, awkward):
    transform = EvalTransform.for_model(vit_b16[0])
    landscape = Image.open(awkward["landscape.jpg"]).convert("RGB")
    resized = landscape.resize((298, 224), Image.BICUBIC)  # 500x375 -> shorter side 224, int(224 * 500 / 375)
    expected = np.asarray(resized)[:, 37 : 37 + 224]
    difference = np.abs(transform.load(awkward["landscape.jpg"]).astype(int) - expected.astype(int))
    assert difference.max() <= 2, "not squashed: the centre 224 columns of the aspect-kept resize"
    squashed = np.asarray(landscape.resize((224, 224), Image.BICUBIC)).astype(int)
    assert np.abs(transform.load(awkward["landscape.jpg"]).astype(int) - squashed).mean() > 10


def test_the_cache_holds_the_same_pixels_and_maps_into_memory(vit_b16, awkward, tmp_path: Path):
    transform = EvalTransform.for_model(vit_b16[0])
    root = next(iter(awkward.values())).parent
    split_file = _split_file(tmp_path, sorted(awkward))
    entries = [(name, index % 2, f"class{index % 2}") for index, name in enumerate(sorted(awkward))]
    manifest = build_eval_cache("awkward", root, split_file, entries, transform, tmp_path / "cache", threads=2)
    assert manifest["count"] == len(awkward) and manifest["shape"] == [len(awkward), 224, 224, 3]
    assert manifest["transform"]["sha256"] == transform.sha256 and manifest["split_file"]["sha256"]
    assert {"open_clip_torch", "torchvision", "pillow", "complora"} <= set(manifest["versions"])
    mapped = np.load(tmp_path / "cache" / PIXELS_FILE, mmap_mode="r")
    decoded = np.concatenate(list(DecodedPixels(root, entries, transform, threads=1).batches(4)))
    assert np.array_equal(mapped, decoded)
    streamed = np.concatenate(list(open_eval_cache(tmp_path / "cache", split_file, transform).batches(4)))
    assert np.array_equal(streamed, decoded)
    assert sorted(os.listdir(tmp_path)) == ["cache", "split.json"], "no staging folder is left"


@pytest.fixture
def small_cache(tmp_path: Path, awkward: dict[str, Path]) -> dict:
    transform = EvalTransform.from_preprocess_cfg({"size": (32, 32)})
    root = next(iter(awkward.values())).parent
    names = sorted(awkward)
    split_file = _split_file(tmp_path, names)
    entries = [(name, index % 2, f"class{index % 2}") for index, name in enumerate(names)]
    build_eval_cache("awkward", root, split_file, entries, transform, tmp_path / "cache")
    return {"root": root, "split_file": split_file, "transform": transform, "cache": tmp_path / "cache"}


def _stream(cache: dict, transform: EvalTransform | None = None) -> list[np.ndarray]:
    return list(open_eval_cache(cache["cache"], cache["split_file"], transform or cache["transform"]).batches(3))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("flip a pixel", "corrupt"),
        ("damage the header", "header is damaged"),
        ("other image libraries", "other image libraries"),
        ("truncate", "shorter|bytes"),
        ("drop the manifest", "unfinished build"),
        ("change the split file", "another version of"),
        ("another transform", "another transform"),
    ],
)
def test_a_damaged_or_mismatched_cache_is_removed_and_never_used(small_cache: dict, damage: str, message: str):
    pixels, transform = small_cache["cache"] / PIXELS_FILE, small_cache["transform"]
    (small_cache["cache"] / ".snakemake_timestamp").touch()  # what Snakemake leaves in a directory() output
    if damage == "flip a pixel":
        data = bytearray(pixels.read_bytes())
        data[-5] ^= 0xFF
        pixels.write_bytes(bytes(data))
    elif damage == "damage the header":
        data = bytearray(pixels.read_bytes())
        data[0] ^= 0xFF
        pixels.write_bytes(bytes(data))
    elif damage == "other image libraries":
        manifest = json.loads((small_cache["cache"] / MANIFEST_FILE).read_text())
        manifest["versions"]["pillow"] = "9.0.0"
        (small_cache["cache"] / MANIFEST_FILE).write_text(json.dumps(manifest))
    elif damage == "truncate":
        pixels.write_bytes(pixels.read_bytes()[:-100])
    elif damage == "drop the manifest":
        (small_cache["cache"] / MANIFEST_FILE).unlink()
    elif damage == "change the split file":
        split = json.loads(small_cache["split_file"].read_text())
        small_cache["split_file"].write_text(json.dumps({**split, "test": split["test"][:-1]}))
    else:
        transform = EvalTransform.from_preprocess_cfg({"size": (32, 32), "interpolation": "bilinear"})
    with pytest.raises(ComploraError, match=message):
        _stream(small_cache, transform)
    assert not small_cache["cache"].exists(), "removed, so that the next run rebuilds it"


def test_a_folder_that_is_no_cache_is_never_deleted(small_cache: dict, tmp_path: Path):
    project = tmp_path / "thesis"
    project.mkdir()
    (project / "thesis.tex").write_text("years of work")
    with pytest.raises(ComploraError, match=r"not a cache folder.*left alone"):
        open_eval_cache(project, small_cache["split_file"], small_cache["transform"])
    entries = [("small.png", 0, "a")]
    with pytest.raises(ComploraError, match="is not an evaluation cache"):
        build_eval_cache(
            "x", small_cache["root"], small_cache["split_file"], entries, small_cache["transform"], project
        )
    assert (project / "thesis.tex").read_text() == "years of work"


def test_a_rebuild_replaces_the_old_cache_whole(small_cache: dict, tmp_path: Path):
    split = json.loads(small_cache["split_file"].read_text())
    small_cache["split_file"].write_text(json.dumps({**split, "test": split["test"][:4]}))
    entries = [tuple(entry) for entry in split["test"][:4]]
    (tmp_path / ".cache.staging-killed").mkdir()  # left by a build that was killed
    build_eval_cache("awkward", small_cache["root"], small_cache["split_file"], entries, small_cache["transform"],
                     small_cache["cache"])  # fmt: skip
    assert sorted(os.listdir(tmp_path)) == ["cache", "split.json"]
    assert [len(batch) for batch in _stream(small_cache)] == [3, 1]


def test_an_intact_cache_streams_in_batches_of_the_asked_size(small_cache: dict):
    batches = _stream(small_cache)
    assert [len(batch) for batch in batches] == [3, 3, 3] and batches[0].shape[1:] == (32, 32, 3)


def test_zero_shot_accuracy_is_the_same_from_the_cache_and_from_the_files(small_cache: dict, make_tiny):
    from complora.evaluation import zero_shot_accuracies

    model = make_tiny()
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    transform = small_cache["transform"]
    accuracies = []
    for cache in (small_cache["cache"], None):
        test = open_test_split(DatasetRef("awkward", small_cache["root"], small_cache["split_file"], cache), transform)
        accuracies.append(zero_shot_accuracies(model, tokenizer, test, ["a photo of a {}.", "{}"], transform, 2))
    assert accuracies[0] == accuracies[1] and len({top1.predictions_sha256 for top1 in accuracies[0]}) == 2


def test_training_crops_come_from_the_original_image(awkward: dict[str, Path]):
    root = awkward["landscape.jpg"].parent
    entries = [("landscape.jpg", 0, "a"), ("portrait.jpg", 1, "b"), ("small.png", 0, "a")]
    images = TrainingImages(root, entries, (32, 32))
    assert images.shapes == [(375, 500), (500, 375), (15, 20)]
    crops = images.crops(torch.tensor([0, 1, 2]), (0.08, 1.0), torch.Generator().manual_seed(7))
    assert crops.shape == (3, 32, 32, 3) and crops.dtype == torch.uint8

    generator = torch.Generator().manual_seed(7)
    for index, (name, _, _) in enumerate(entries):
        original = decode_rgb(root / name)
        crop = draw_crop(*original.shape[:2], (0.08, 1.0), generator)
        assert crop.top + crop.height <= original.shape[0] and crop.left + crop.width <= original.shape[1]
        expected = TF.resized_crop(original.permute(2, 0, 1), crop.top, crop.left, crop.height, crop.width, [32, 32],
                                   InterpolationMode.BICUBIC, antialias=True)  # fmt: skip
        expected = TF.horizontal_flip(expected) if crop.flip else expected
        assert torch.equal(crops[index], expected.permute(1, 2, 0)), name


def _augment_before_the_data_package(images: torch.Tensor, crop_scale, generator) -> torch.Tensor:
    """finetune.augment as it was before training crops came from originals (uint8 NHWC at the model size)."""
    batch = images.permute(0, 3, 1, 2)
    size = list(batch.shape[-2:])
    area = size[0] * size[1]
    out = []
    for image in batch:
        for _ in range(10):
            target = area * torch.empty(1).uniform_(*crop_scale, generator=generator).item()
            log_ratio = torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator).item()
            width = round(math.sqrt(target * math.exp(log_ratio)))
            height = round(math.sqrt(target / math.exp(log_ratio)))
            if 0 < width <= size[1] and 0 < height <= size[0]:
                top = int(torch.randint(0, size[0] - height + 1, (1,), generator=generator))
                left = int(torch.randint(0, size[1] - width + 1, (1,), generator=generator))
                break
        else:
            top, left, height, width = 0, 0, size[0], size[1]
        crop = TF.resized_crop(image, top, left, height, width, size, InterpolationMode.BICUBIC, antialias=True)
        if torch.rand(1, generator=generator).item() < 0.5:
            crop = TF.horizontal_flip(crop)
        out.append(crop)
    return torch.stack(out).permute(0, 2, 3, 1)


def test_square_images_at_the_model_size_get_the_crops_they_always_got(tmp_path: Path):
    """What keeps the demo's published tables: its images are 32x32, the model's size."""
    from helpers import image_set

    images = torch.randint(0, 256, (6, 32, 32, 3), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    training = image_set(tmp_path / "square", images, torch.arange(6) % 2)
    order = torch.tensor([4, 1, 5, 0, 2, 3])
    ours = training.crops(order, (0.08, 1.0), torch.Generator().manual_seed(9))
    before = _augment_before_the_data_package(images[order], (0.08, 1.0), torch.Generator().manual_seed(9))
    assert torch.equal(ours, before)


def test_a_crop_no_try_fits_falls_back_as_torchvision_does():
    """A panorama where no crop of scale >= 0.9 has a ratio within 3/4-4/3: torchvision's central fallback."""
    from torchvision.transforms import RandomResizedCrop

    for height, width in ((100, 1000), (1000, 100)):
        crop = draw_crop(height, width, (0.99, 1.0), torch.Generator().manual_seed(0))
        expected = RandomResizedCrop.get_params(torch.zeros(3, height, width), [0.99, 1.0], [3 / 4, 4 / 3])
        assert (crop.top, crop.left, crop.height, crop.width) == expected, (height, width)


def test_crops_are_the_same_in_memory_or_decoded_per_batch_and_repeat_by_seed(awkward: dict[str, Path]):
    root = awkward["landscape.jpg"].parent
    entries = [(name, index % 3, "c") for index, name in enumerate(sorted(awkward))]
    held = TrainingImages(root, entries, (48, 48), threads=2)
    streamed = TrainingImages(root, entries, (48, 48), memory_limit_mib=0.1, threads=2)
    assert held.in_memory and not streamed.in_memory and held.decoded_mib > 0.1
    order = torch.randperm(len(entries), generator=torch.Generator().manual_seed(0))

    def views(images: TrainingImages, seed: int) -> torch.Tensor:
        return images.crops(order, (0.08, 1.0), torch.Generator().manual_seed(seed))

    assert torch.equal(views(held, 3), views(streamed, 3))
    assert torch.equal(views(held, 3), views(TrainingImages(root, entries, (48, 48)), 3)), "thread count"
    assert not torch.equal(views(held, 3), views(held, 4))


def test_split_paths_may_not_leave_the_dataset_folder(tmp_path: Path):
    root, outside = tmp_path / "data", tmp_path / "secret.jpg"
    (root / "cls").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(outside)
    (root / "cls" / "link.jpg").symlink_to(outside)
    for relpath in ("../secret.jpg", "cls/../../secret.jpg", str(outside), "cls/link.jpg"):
        with pytest.raises(ComploraError, match=r"outside the dataset's image folder|is absolute"):
            image_paths(root, [relpath])
    Image.new("RGB", (8, 8)).save(root / "cls" / "fine.jpg")
    assert image_paths(root, ["cls/fine.jpg"]) == [(root / "cls" / "fine.jpg").resolve()]


@pytest.mark.parametrize("broken", ["truncated.jpg", "corrupt.jpg", "empty.jpg", "not_an_image.png", "escape"])
def test_a_custom_dataset_with_a_bad_file_is_refused_when_prepared(broken: str, tmp_path: Path):
    images = tmp_path / "leaves"
    for label in ("oak", "elm"):
        (images / label).mkdir(parents=True)
        for index in range(4):
            Image.new("RGB", (40 + index, 30), (index * 40, 90, 20)).save(images / label / f"{index}.jpg")
    if broken == "escape":
        (tmp_path / "elsewhere.jpg").write_bytes((images / "oak" / "0.jpg").read_bytes())
        (images / "oak" / "3.jpg").unlink()
        (images / "oak" / "3.jpg").symlink_to(tmp_path / "elsewhere.jpg")
        expected = "leads outside"
    else:
        bad = broken_images(tmp_path / "bad")[broken]
        (images / "oak" / "3.jpg").unlink()
        os.replace(bad, images / "oak" / ("3" + bad.suffix))
        expected = "3" + bad.suffix + r".*(cannot be decoded|empty file).*replace or remove"
    with pytest.raises(ComploraError, match=expected):
        prepare_custom("leaves", images, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "nothing that looks finished"
    assert not list(tmp_path.glob(".out.staging-*"))


def test_a_bad_test_image_stops_the_cache_build_and_leaves_nothing(tmp_path: Path):
    bad = broken_images(tmp_path / "images")
    transform = EvalTransform.from_preprocess_cfg({"size": (32, 32)})
    Image.new("RGB", (40, 30)).save(tmp_path / "images" / "good.jpg")
    entries = [("good.jpg", 0, "a"), ("truncated.jpg", 1, "b")]
    split_file = _split_file(tmp_path, ["good.jpg", "truncated.jpg"])
    with pytest.raises(ComploraError, match=r"truncated\.jpg cannot be decoded"):
        build_eval_cache("bad", tmp_path / "images", split_file, entries, transform, tmp_path / "cache", threads=2)
    assert not (tmp_path / "cache").exists() and not list(tmp_path.glob(".cache.staging-*"))
    assert set(bad) <= set(os.listdir(tmp_path / "images"))
