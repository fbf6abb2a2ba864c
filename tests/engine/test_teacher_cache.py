"""kdkit.distill.cache.TeacherCache with tapped features: what it stores equals what the teacher's taps give
online, sample by sample, and a DistillStep hands every term the features of its own batch's samples."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

import kdkit
from kdkit.distill import FeatureTaps, TeacherCombiner
from kdkit.distill.step import DistillStep
from kdkit.distill.distiller import Distiller
from kdkit.distill.terms import TermSpec
from kdkit.distill.cache import DiskTeacherCache, TeacherCache, describe_caches, plan_cache
from kdkit.distill.store import StoreOptions
from kdkit.engine import WithIndex
from kdkit.errors import ConfigError

N = 37


class Tagged(Dataset):
    """Sample ``i`` is a 3 x 4 x 4 image holding its identity ``i`` in every pixel (plus a ramp)."""

    def __init__(self, n: int = N):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        ramp = torch.arange(48, dtype=torch.float32).view(3, 4, 4) / 48
        return torch.full((3, 4, 4), float(i)) + ramp, i % 3


def known_feature(ids: torch.Tensor) -> torch.Tensor:
    """What the oracle teacher's ``body`` returns for the samples ``ids``: a 2 x 4 x 4 map."""
    x = torch.stack([Tagged()[int(i)][0] for i in ids])
    return torch.cat([2.0 * x[:, :1] + 1.0, x[:, 1:2] * x[:, 2:3]], 1)


class Body(nn.Module):
    def forward(self, x):
        return torch.cat([2.0 * x[:, :1] + 1.0, x[:, 1:2] * x[:, 2:3]], 1)


class OracleTeacher(nn.Module):
    """Tapped module ``body``: a known function of the sample; counts its forward passes."""

    def __init__(self):
        super().__init__()
        self.body = Body()
        self.head = nn.Linear(2, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.head(self.body(x).mean((2, 3)))


def test_cached_features_equal_the_online_taps_for_every_index():
    teacher = OracleTeacher().eval()
    ds = Tagged()
    cache = TeacherCache(teacher, ds, torch.device("cpu"), batch_size=5, paths=["body"])
    assert cache.paths == ["body"]
    estimate = cache.estimate_nbytes()
    cache.build()
    assert estimate == cache.nbytes == {"logits": N * 3 * 4, "features": N * 2 * 4 * 4 * 4}
    every = torch.arange(N)
    got = cache.features(every)["body"]
    torch.testing.assert_close(got, known_feature(every), rtol=0, atol=0)  # the known answer
    with torch.no_grad(), FeatureTaps(teacher, ["body"], detach=True) as taps:  # online, one sample at a time
        for i in range(N):
            logits = teacher(ds[i][0][None])
            online = taps.pop()["body"]
            torch.testing.assert_close(cache.features(torch.tensor([i]))["body"], online, rtol=0, atol=0)
            torch.testing.assert_close(cache[torch.tensor([i])], logits)
    scrambled = torch.tensor([30, 2, 2, 17, 0, 36])
    torch.testing.assert_close(cache.features(scrambled)["body"], known_feature(scrambled), rtol=0, atol=0)
    assert cache.features(scrambled)["body"].device == torch.device("cpu")


def test_a_convnet_teacher_cached_and_online_agree():
    torch.manual_seed(0)
    ds = kdkit.get_registry("datasets").build("shapes", "train", None, train_per_class=4, augment="none")
    teacher = kdkit.get_registry("teachers").build("convnet", 10, width=4).eval()
    cache = TeacherCache(teacher, ds, torch.device("cpu"), batch_size=7, paths=["features.7", "features.3"])
    idx = torch.tensor([3, 0, 39, 17, 17])
    x = torch.stack([ds[i][0] for i in idx.tolist()])
    with torch.no_grad(), FeatureTaps(teacher, ["features.7", "features.3"], detach=True) as taps:
        logits = teacher(x)
        online = taps.pop()
    cached = cache.features(idx)
    assert set(cached) == {"features.7", "features.3"}
    for path in cached:
        torch.testing.assert_close(cached[path], online[path], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cache[idx], logits, rtol=1e-4, atol=1e-5)

    half = TeacherCache(teacher, ds, torch.device("cpu"), batch_size=7, paths=["features.7"],
                        feature_dtype=torch.float16)
    got = half.features(idx)["features.7"]
    assert got.dtype == torch.float32  # stored in float16, handed over in the teacher's dtype
    full = TeacherCache(teacher, ds, torch.device("cpu"), batch_size=7, paths=["features.7"])
    assert half.nbytes["features"] * 2 == full.nbytes["features"]
    torch.testing.assert_close(got, online["features.7"], rtol=2e-3, atol=2e-3)


def test_outputs_that_cannot_be_cached_and_wrong_paths():
    class TupleOut(nn.Module):
        def forward(self, x):
            return x, x

    class Teacher(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = TupleOut()
            self.unused = nn.Identity()

        def forward(self, x):
            return self.pair(x)[0].flatten(1)[:, :3]

    with pytest.raises(ConfigError, match="has no module 'pairs'"):
        TeacherCache(Teacher(), Tagged(), torch.device("cpu"), paths=["pairs"])
    with pytest.raises(ConfigError, match="'pair' of Teacher returned tuple, not a tensor"):
        TeacherCache(Teacher(), Tagged(), torch.device("cpu"), paths=["pair"]).build()
    with pytest.raises(ConfigError, match="'unused' of Teacher did not run"):
        TeacherCache(Teacher(), Tagged(), torch.device("cpu"), paths=["unused"]).estimate_nbytes()
    logs: list[str] = []
    tuple_cache = [TeacherCache(Teacher(), Tagged(), torch.device("cpu"), paths=["pair"])]
    plan = plan_cache(tuple_cache, None, 3, logs.append)  # auto: run the teacher online
    assert plan.mode == "off" and "cannot be cached" in plan.reason and "cannot be cached" in logs[-1]
    for setting in (True, "memory", "disk"):
        with pytest.raises(ConfigError, match="not a tensor"):
            plan_cache(tuple_cache, setting, 3, logs.append)


def test_the_auto_bound_on_the_estimate():
    caches = [TeacherCache(OracleTeacher(), Tagged(), torch.device("cpu"), paths=["body"]) for _ in range(2)]
    features = 2 * N * 2 * 4 * 4 * 4  # both teachers' features
    size = features + 2 * N * 3 * 4  # and their logits
    logs: list[str] = []
    plan = plan_cache(caches, None, 3, logs.append, limit=size + 1)
    assert (plan.mode, plan.cached) == ("memory", True) and "below" in plan.reason
    assert f"tapped features {features / 2 ** 10:.1f} KiB in CPU memory" in logs[-1] and "below 2.0 GiB" not in logs[-1]
    plan_cache(caches, "auto", 3, logs.append)
    assert "keeps them in memory below 2.0 GiB" in logs[-1]
    plan = plan_cache(caches, None, 3, logs.append, limit=size)  # at the bound: the disk store
    assert plan.mode == "disk" and "disk store of" in plan.reason
    assert plan_cache(caches, True, 3, logs.append, limit=size).mode == "memory"  # true: in memory whatever the size
    assert logs[-1].startswith("WARNING: teacher_cache=true holds")
    assert plan_cache(caches, "disk", 3, logs.append, limit=10 ** 12).mode == "disk"
    for off in (False, "off"):
        plan = plan_cache(caches, off, 3, logs.append)
        assert (plan.mode, plan.cached) == ("off", False) and "distill.teacher_cache=" in plan.reason
    plan = plan_cache(caches, None, 3, logs.append, deterministic=False, augmentation="data.augment=weak")
    assert plan.mode == "off" and "augmented (data.augment=weak)" in plan.reason
    assert plan_cache(caches, "disk", 3, logs.append, deterministic=False).mode == "disk"  # asked for: the plain view
    with pytest.raises(ConfigError, match="expected one of auto, memory, disk, off"):
        plan_cache(caches, "maybe", 3, logs.append)
    assert all(c._table is None for c in caches)  # estimating built nothing
    assert describe_caches(caches).startswith(f"teacher cache of 2 teacher(s) x {N} samples")


def test_logits_only_estimates_run_no_teacher():
    teacher = OracleTeacher()
    plan = plan_cache([TeacherCache(teacher, Tagged(), torch.device("cpu"))], None, 3, [].append, limit=N * 3 * 4)
    assert plan.mode == "disk" and teacher.calls == 0  # N x 3 float32 logits: at the bound


class RecordingFeatureLoss:
    """A feature term that records the teacher feature it is given, with the batch's images."""

    def __init__(self):
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.images = None

    def __call__(self, inputs):
        self.seen.append((self.images.clone(), inputs.teacher_feature.clone()))
        # the parameter-free body's feature reaches no student weight: + 0 x the logits keeps a gradient path
        # (a term that reaches no student weight is refused at the first step)
        return ((inputs.student_feature - inputs.teacher_feature) ** 2).mean() + 0.0 * inputs.student_logits.sum()


def _step(teacher_or_cache, teacher, loss, student=None):
    spec = TermSpec(loss="record", weight=1.0, name="record", student="body", teacher="body")
    distiller = Distiller([spec], [loss], TeacherCombiner("avg_logits", 1), 0.5, 1.0)
    cache = teacher_or_cache if isinstance(teacher_or_cache, TeacherCache) else None

    def teacher_logits(x, y, idx):
        return [cache[idx]] if cache is not None else [teacher(x)]

    student = student if student is not None else OracleTeacher()
    return DistillStep(distiller, student, teacher_logits, [teacher_or_cache]), student


def _identities(images: torch.Tensor) -> torch.Tensor:
    return images[:, 0, 0, 0].round().long()


@pytest.mark.parametrize("store", ["memory", "disk"])
@pytest.mark.parametrize("lose_the_index", [False, True])
def test_the_step_hands_each_sample_its_own_cached_feature(monkeypatch, tmp_path, lose_the_index, store):
    """Shuffled batches of a Subset whose positions differ from the samples' identities: the feature a
    term sees is, row by row, the cached feature of the image in that row — from memory as from the
    disk store — and the teacher does not run.  With the index lost (the batch's last element is the
    label), the check catches it."""
    if lose_the_index:
        monkeypatch.setattr(WithIndex, "__getitems__", lambda self, indices: [self.dataset[i] for i in indices])
    g = torch.Generator().manual_seed(0)
    train = Subset(Tagged(), torch.randperm(N, generator=g)[:29].tolist())  # position != identity
    teacher = OracleTeacher().eval()
    if store == "disk":  # float32: the oracle's values exactly
        cache = DiskTeacherCache(teacher, train, torch.device("cpu"), batch_size=8, paths=["body"], root=tmp_path,
                                 options=StoreOptions(dtype="float32"))
    else:
        cache = TeacherCache(teacher, train, torch.device("cpu"), batch_size=8, paths=["body"])
    cache.build()
    calls = teacher.calls
    loss = RecordingFeatureLoss()
    step, student = _step(cache, teacher, loss)
    assert step.taps == [step.student_taps]  # nothing to attach on the cached teacher
    for taps in step.taps:
        taps.attach()
    for batch in DataLoader(WithIndex(train), batch_size=6, shuffle=True, generator=g):
        loss.images = batch[0]
        step(student, batch)
    assert teacher.calls == calls  # features and logits came from the cache
    assert sum(len(images) for images, _ in loss.seen) == len(train)
    matches = [torch.equal(feature, known_feature(_identities(images))) for images, feature in loss.seen]
    assert all(matches) is not lose_the_index


def test_online_and_cached_steps_give_the_same_losses():
    """The same student, the same batches: a step on the cached teacher and a step on the online
    (tapped) teacher see equal features and return equal losses."""
    ds = Tagged()
    teacher = OracleTeacher().eval()
    cache = TeacherCache(teacher, ds, torch.device("cpu"), batch_size=8, paths=["body"])
    online_loss, cached_loss = RecordingFeatureLoss(), RecordingFeatureLoss()
    online, student = _step(teacher, teacher, online_loss)
    cached, _ = _step(cache, teacher, cached_loss, student)
    assert len(online.taps) == 2 and len(cached.taps) == 1
    for taps in online.taps + cached.taps:
        taps.attach()
    for batch in DataLoader(WithIndex(ds), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1)):
        online_loss.images = cached_loss.images = batch[0]
        a, logs_a = online(student, batch)
        b, logs_b = cached(student, batch)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(logs_a["record"], logs_b["record"], rtol=1e-6, atol=1e-6)
    for (_, f_online), (_, f_cached) in zip(online_loss.seen, cached_loss.seen):
        torch.testing.assert_close(f_online, f_cached, rtol=0, atol=0)


def test_a_cache_without_the_tapped_path_is_refused():
    teacher = OracleTeacher()
    cache = TeacherCache(teacher, Tagged(), torch.device("cpu"))  # logits only
    with pytest.raises(ConfigError, match="its cache holds the outputs of no module, not of body"):
        _step(cache, teacher, RecordingFeatureLoss())


# --- through a whole kd run: the oracle teacher behind the disk store ------------------------------

ORACLE_BASE = [
    "data.name=tagged_shapes", "baseline.enabled=false", "data.train_per_class=8", "data.test_per_class=4",
    "student.name=probe", "distill.loss=record_kl", "teacher_train.epochs=1", "teacher_train.batch_size=16",
    "train.epochs=2", "train.batch_size=16", "logging.progress=false", "teachers=[{name: oracle_sample}]",
]


@pytest.fixture
def oracle_manager(monkeypatch, tmp_path):
    import kdkit_engine_testplugin
    import kdkit_oracle_testplugin as oracle

    from kdkit.plugins import plugin_manager_for_testing

    monkeypatch.setenv("KDKIT_CACHE_DIR", str(tmp_path / "cache"))
    with plugin_manager_for_testing(kdkit_engine_testplugin, oracle) as pm:
        oracle.reset_record()
        yield pm


def _oracle_steps():
    """``(positions of the student's batch, teacher logits the loss saw)`` of every training step."""
    from kdkit_oracle_testplugin import RECORD

    ids, seen = RECORD["student_ids"], RECORD["teacher_logits"]
    assert ids and len(ids) == len(seen)
    return list(zip(ids, seen))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_loss_sees_each_samples_own_oracle_outputs_through_the_store(oracle_manager, tmp_path, dtype):
    """tagged_shapes (class-sorted, the validation split held out: the training data is a Subset whose
    positions are not the base dataset's), a shuffling loader, the disk store: at every step the loss
    receives, row by row, the oracle's logits of exactly the samples in the student's batch (rounded to
    the store's dtype); a second run reuses the store."""
    import kdkit_oracle_testplugin as oracle

    from kdkit.engine import train

    sets = ORACLE_BASE + ["data.augment=none", "distill.teacher_cache=disk", f"distill.teacher_store_dtype={dtype}"]
    summary = train("kd", sets=sets, out=tmp_path / "run", manager=oracle_manager)
    d = summary["distill"]
    assert (d["teacher_cache"], d["teacher_cache_mode"], d["teacher_cache_reason"]) == \
        (True, "disk", "distill.teacher_cache=disk")
    steps = _oracle_steps()
    first = torch.cat([p for p, _ in steps[:3]])
    assert not torch.equal(first, first.sort().values)  # shuffled
    half = getattr(torch, dtype)
    for positions, seen in steps:
        torch.testing.assert_close(seen, oracle.sample_vector(positions, 10).to(half).float(), rtol=0, atol=0)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "teacher cache: disk (distill.teacher_cache=disk)" in log and " built)" in log

    oracle.reset_record()
    train("kd", sets=sets, out=tmp_path / "again", manager=oracle_manager)
    assert " reused)" in (tmp_path / "again" / "train.log").read_text()
    for positions, seen in _oracle_steps():
        torch.testing.assert_close(seen, oracle.sample_vector(positions, 10).to(half).float(), rtol=0, atol=0)


def test_augmented_data_turns_the_cache_off_and_says_why(oracle_manager, tmp_path):
    from kdkit.engine import train

    summary = train("kd", sets=ORACLE_BASE + ["data.augment=weak"], out=tmp_path / "run", manager=oracle_manager)
    d = summary["distill"]
    assert (d["teacher_cache"], d["teacher_cache_mode"]) == (False, "off")
    assert d["teacher_cache_reason"].startswith("the training data is augmented (data.augment=weak)")
    assert "kd: teacher cache off: the training data is augmented (data.augment=weak)" in \
        (tmp_path / "run" / "train.log").read_text()


def test_a_corrupt_store_shard_is_one_line_and_exit_2(tmp_path):
    """The CLI: a store damaged after it was built stops the next run with one line, exit status 2."""
    from kdkit_engine_testutil import kdkit_cli

    cache = tmp_path / "cache"
    args = ["--plugins-module", "kdkit_engine_testplugin", "--plugins-module", "kdkit_oracle_testplugin", "train",
            "--plugin", "kd"]
    sets = [x for s in ORACLE_BASE + ["data.augment=none", "distill.teacher_cache=disk", "train.epochs=1"]
            for x in ("--set", s)]
    first = kdkit_cli(args + ["--out", str(tmp_path / "one")] + sets, KDKIT_CACHE_DIR=str(cache))
    assert first.returncode == 0, first.stderr[-2000:]
    shard, = (cache / "teacher-store").glob("*/logits.npy")
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    second = kdkit_cli(args + ["--out", str(tmp_path / "two")] + sets, KDKIT_CACHE_DIR=str(cache))
    assert second.returncode == 2
    errors = [ln for ln in second.stderr.splitlines() if ln.startswith("kdkit: error:")]
    assert len(errors) == 1 and "Traceback" not in second.stderr
    assert f"teacher store {shard.parent}: shard logits.npy is corrupt" in errors[0]
    assert f"rm -r {shard.parent}" in errors[0]


def test_a_topk_store_hands_the_loss_the_top_logits_and_the_mean_of_the_rest(oracle_manager, tmp_path):
    import kdkit_oracle_testplugin as oracle

    from kdkit.engine import train

    sets = ORACLE_BASE + ["data.augment=none", "distill.teacher_cache=disk", "distill.teacher_store_dtype=float32"]
    with pytest.raises(ConfigError, match="distill.teacher_store_topk: 10 is not below the 10 classes"):
        train("kd", sets=sets + ["distill.teacher_store_topk=10"], out=tmp_path / "all", manager=oracle_manager)
    oracle.reset_record()
    train("kd", sets=sets + ["distill.teacher_store_topk=3"], out=tmp_path / "run", manager=oracle_manager)
    for positions, seen in _oracle_steps():
        exact = oracle.sample_vector(positions, 10)
        top = exact.topk(3, dim=1)
        rest = ((exact.sum(1) - top.values.sum(1)) / 7)[:, None].expand(-1, 10)
        torch.testing.assert_close(seen, rest.clone().scatter_(1, top.indices, top.values), rtol=1e-6, atol=1e-6)
