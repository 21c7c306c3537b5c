"""The one resolver (ncsn_tune.tuning): every rule for the schedule, M, eps and a run's data, and their notes."""

import json
from dataclasses import dataclass

import numpy as np
import pytest

from ncsn_tune import NoiseSchedule, load_dataset
from ncsn_tune.analysis import optimal_step_size
from ncsn_tune.config import SCHEDULE_FILE, STEP_SIZE_FILE
from ncsn_tune.errors import ScheduleError
from ncsn_tune.tuning import Given, derive_schedule, resolve, resolve_data, resolve_schedule, save_step_size
from cli_run import run


def array_file(path, n=20, size=8, seed=0):
    x = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    np.save(path, x)
    return path


@pytest.fixture
def work(tmp_path):
    return tmp_path / "work"


@pytest.fixture
def data_a(tmp_path):
    return load_dataset(array_file(tmp_path / "a.npy"))


@pytest.fixture
def data_b(tmp_path):
    return load_dataset(array_file(tmp_path / "b.npy", seed=1))


def save_derived(dataset, work, **kwargs):
    schedule = NoiseSchedule.from_data(dataset, **kwargs)
    schedule.save(work / SCHEDULE_FILE)
    return schedule


# ---------------------------------------------------------------------------------------------- data identity


def test_identity_tells_data_sets_apart(tmp_path, data_a, data_b):
    again = load_dataset(tmp_path / "a.npy")
    assert data_a.identity().same_data(again.identity())
    assert not data_a.identity().same_data(data_b.identity())
    x = np.load(tmp_path / "a.npy")
    x[0, 0, 0, 0] ^= 1  # one changed byte in a fingerprinted item
    np.save(tmp_path / "c.npy", x)
    assert not data_a.identity().same_data(load_dataset(tmp_path / "c.npy").identity())
    identity = data_a.identity()
    assert identity.path == str((tmp_path / "a.npy").resolve()) and identity.num_points == 20 and identity.shape == (3, 8, 8)


def test_schedule_records_the_data_it_was_derived_from(data_a, work, tmp_path):
    schedule = save_derived(data_a, work)
    back = NoiseSchedule.load(work / SCHEDULE_FILE)
    assert back == schedule and back.data["fingerprint"] == data_a.identity().fingerprint
    assert back.data["path"] == str((tmp_path / "a.npy").resolve())


# ---------------------------------------------------------------------------------------------- the schedule


def test_rule1_a_named_file_is_used_and_other_data_is_said(data_a, data_b, work, tmp_path):
    NoiseSchedule.from_data(data_b).save(tmp_path / "b_schedule.json")
    choice = resolve_schedule(Given(schedule_file=tmp_path / "b_schedule.json", data=data_a), workdir=work)
    assert choice.schedule.sigma_max == NoiseSchedule.from_data(data_b).sigma_max
    assert choice.file == tmp_path / "b_schedule.json"
    assert any("derived from other data" in n and "used because it was named" in n for n in choice.notes)


def test_rule1_a_named_file_of_another_dimension_is_refused(data_a, work, tmp_path):
    NoiseSchedule.from_num_scales(50.0, 3072, 232).save(tmp_path / "s.json")
    with pytest.raises(ScheduleError, match="D = 3072") as err:
        resolve_schedule(Given(schedule_file=tmp_path / "s.json", data=data_a), workdir=work)
    assert "schedule" in err.value.fields


def test_rule2_numbers(work, data_a):
    choice = resolve_schedule(Given(sigma_max=50.0, num_scales=232), workdir=work)
    assert choice.schedule.num_scales == 232 and choice.schedule.dim is None and choice.schedule.data is None
    choice = resolve_schedule(Given(sigma_max=50.0, dim=3072), workdir=work)
    assert choice.schedule.num_scales == 220
    choice = resolve_schedule(Given(sigma_max=5.0, data=data_a), workdir=work)  # sigma_max given, D from the data
    assert choice.schedule.dim == 192 and choice.schedule.data is None
    with pytest.raises(ScheduleError, match="sigma_max alone"):
        resolve_schedule(Given(sigma_max=50.0), workdir=work)


def test_rule2_numbers_record_their_pixel_range_as_sigmas_does(work, data_a):
    """The resolver and ``ncsn-tune sigmas`` build a schedule from numbers the same way: in the pixel range given
    (or the data's), so an export of numbers in [-1, 1] is not taken for [0, 1]."""
    for given in (Given(sigma_max=100.0, num_scales=232, pixel_range="-1,1"), Given(sigma_max=100.0, dim=3072, pixel_range="-1,1"),
                  Given(sigma_max=5.0, data=data_a)):
        chosen, derived = resolve_schedule(given, workdir=work).schedule, derive_schedule(given)
        assert chosen.pixel_range == derived.pixel_range == (given.pixel_range or data_a.pixel_range)
        assert chosen.same_scales(derived)


@dataclass
class Run:
    schedule: NoiseSchedule
    steps_per_scale: int = 5
    step_size: float = 6.2e-6
    data: dict | None = None


def test_rule3_a_runs_schedule_and_its_step(work):
    run = Run(NoiseSchedule.from_num_scales(50.0, 3072, 232))
    tuning = resolve(Given(run=run), workdir=work)
    assert tuning.schedule is run.schedule and tuning.steps_per_scale == 5 and tuning.step_size == 6.2e-6
    assert any("the run's M = 5" in n for n in tuning.notes)
    changed = resolve(Given(run=run, num_scales=100), workdir=work)
    assert changed.schedule.num_scales == 100 and changed.schedule.sigma_max == 50.0
    assert changed.step_size == pytest.approx(optimal_step_size(changed.schedule.ratio, 5).step_size)
    m3 = resolve(Given(run=run, steps_per_scale=3), workdir=work)
    assert m3.step_size == pytest.approx(optimal_step_size(run.schedule.ratio, 3).step_size)


def test_rule4_the_saved_schedule_of_the_same_data_is_used(data_a, work, tmp_path):
    saved = save_derived(data_a, work)
    same = load_dataset(tmp_path / "a.npy")  # read again: the same data
    choice = resolve_schedule(Given(data=same), workdir=work)
    assert choice.schedule == saved and choice.file == work / SCHEDULE_FILE


def test_rule4_a_schedule_of_other_data_is_never_used_silently(data_a, data_b, work):
    save_derived(data_b, work)
    choice = resolve_schedule(Given(data=data_a), workdir=work)
    assert choice.schedule.sigma_max == NoiseSchedule.from_data(data_a).sigma_max
    assert choice.file is None
    assert any("derived from other data" in n and "b.npy" in n for n in choice.notes)
    assert any("schedule derived from the data" in n for n in choice.notes)


def test_rule4_a_schedule_made_from_numbers_serves_data_of_its_dimension(data_a, work):
    NoiseSchedule.from_num_scales(9.0, 192, 50).save(work / SCHEDULE_FILE)
    assert resolve_schedule(Given(data=data_a), workdir=work).schedule.sigma_max == 9.0
    NoiseSchedule.from_num_scales(9.0, 3072, 50).save(work / SCHEDULE_FILE)
    choice = resolve_schedule(Given(data=data_a), workdir=work)
    assert choice.schedule.dim == 192 and any("D = 3072" in n for n in choice.notes)


def test_rule4_a_schedule_with_another_sigma_min_or_overlap_is_not_used(data_a, work):
    save_derived(data_a, work)
    choice = resolve_schedule(Given(data=data_a, sigma_min=0.02), workdir=work)
    assert choice.schedule.sigma_min == 0.02 and any("sigma_min 0.01, not the 0.02" in n for n in choice.notes)
    choice = resolve_schedule(Given(data=data_a, target_overlap=0.7), workdir=work)
    assert choice.schedule.target_overlap == 0.7 and any("overlap" in n for n in choice.notes)
    with pytest.raises(ScheduleError, match="does not fit"):  # without data there is nothing to derive from
        resolve_schedule(Given(sigma_min=0.02), workdir=work)


def test_rule4_without_data_the_saved_schedule_is_used(data_b, work):
    saved = save_derived(data_b, work)
    assert resolve_schedule(Given(), workdir=work).schedule == saved


def test_rule4_an_old_schedule_without_identity_is_not_taken_for_this_data(data_a, work):
    old = NoiseSchedule.from_data(data_a).to_dict()
    del old["data"]  # written before schedules recorded their data
    old["source"] = {"name": "a", "pair": [0, 1], "num_points": 20}
    (work).mkdir(parents=True)
    (work / SCHEDULE_FILE).write_text(json.dumps(old))
    choice = resolve_schedule(Given(data=data_a), workdir=work)
    assert choice.file is None and any("other data" in n for n in choice.notes)


def test_rule5_data_alone_is_derived_and_nothing_at_all_is_an_error(data_a, work):
    choice = resolve_schedule(Given(data=data_a), workdir=work)
    assert choice.schedule.data["fingerprint"] == data_a.identity().fingerprint
    with pytest.raises(ScheduleError, match="no noise schedule") as err:
        resolve_schedule(Given(), workdir=work)
    assert {"data", "schedule", "sigma_max"} <= set(err.value.fields)


def test_a_bare_ratio(work):
    choice = resolve_schedule(Given(ratio=1.04), workdir=work)
    assert choice.schedule is None and choice.ratio == 1.04 and choice.sigma_min == 0.01
    with pytest.raises(ScheduleError, match="one or the other"):
        resolve_schedule(Given(ratio=1.04, sigma_max=50.0), workdir=work)


def test_coincident_points_have_no_sigma_max(tmp_path):
    np.save(tmp_path / "same.npy", np.full((5, 4, 4, 3), 7, dtype=np.uint8))
    with pytest.raises(ScheduleError, match="all 5 points coincide"):
        NoiseSchedule.from_data(load_dataset(tmp_path / "same.npy"))
    np.save(tmp_path / "one.npy", np.zeros((1, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(ScheduleError, match="it holds one point"):
        derive_schedule(Given(data=load_dataset(tmp_path / "one.npy")))


# ---------------------------------------------------------------------------------------------- M and eps


def test_steps_the_saved_step_size_gives_m_and_eps_for_its_schedule(data_a, work):
    schedule = save_derived(data_a, work)
    step = optimal_step_size(schedule.ratio, 3, schedule.sigma_min)
    save_step_size(step, work / STEP_SIZE_FILE, schedule)
    tuning = resolve(Given(data=data_a), workdir=work)
    assert tuning.steps_per_scale == 3 and tuning.step_size == step.step_size and tuning.step_file == work / STEP_SIZE_FILE
    other_m = resolve(Given(data=data_a, steps_per_scale=5), workdir=work)  # made for M = 3, not 5
    assert other_m.step_size == optimal_step_size(schedule.ratio, 5).step_size and other_m.step_file is None


def test_steps_a_saved_step_size_of_another_schedule_is_not_used(data_a, data_b, work):
    other = NoiseSchedule.from_data(data_b)
    save_step_size(optimal_step_size(other.ratio, 3), work / STEP_SIZE_FILE, other)
    tuning = resolve(Given(data=data_a), workdir=work)
    assert tuning.steps_per_scale == 5 and tuning.step_file is None
    assert any("made for another schedule" in n for n in tuning.notes)


def test_steps_a_given_eps_is_checked_and_reported(work):
    tuning = resolve(Given(sigma_max=50.0, num_scales=232, step_size=6.2e-6), workdir=work)
    assert tuning.step_size == 6.2e-6 and not tuning.step.optimal
    assert tuning.step.variance_ratio == pytest.approx(1.0554746, abs=1e-7)
    assert tuning.step.variance_ratio > optimal_step_size(tuning.ratio, 5).variance_ratio
    with pytest.raises(ScheduleError, match="below sigma_min\\^2"):
        resolve(Given(sigma_max=50.0, num_scales=232, step_size=1.0), workdir=work)


def test_steps_default_m_is_the_papers(work):
    tuning = resolve(Given(sigma_max=50.0, num_scales=232), workdir=work)
    assert tuning.steps_per_scale == 5 and tuning.step_size == pytest.approx(6.184025e-6, rel=1e-6)


# ---------------------------------------------------------------------------------------------- a run's data


def test_data_given_saved_or_default(data_a, work, tmp_path):
    assert resolve_data("x.npy", None, workdir=work).spec == "x.npy"
    assert resolve_data(None, None, workdir=work).spec == "cifar10"
    save_derived(data_a, work)
    choice = resolve_data(None, None, workdir=work)
    assert choice.spec == str((tmp_path / "a.npy").resolve()) and "data from" in choice.notes[0]


def test_data_a_saved_cifar10_schedule_names_its_folder(fake_cifar, work):
    save_derived(load_dataset("cifar10", fake_cifar, download=False), work)
    choice = resolve_data(None, None, workdir=work)
    assert choice.spec == "cifar10" and choice.data_root == str((fake_cifar / "cifar-10-batches-py").resolve())


# ---------------------------------------------------------------------------------------------- the commands ask it


def test_train_derives_for_its_data_after_sigmas_on_other_data(tmp_path, fake_cifar):
    pytest.importorskip("torch")
    array_file(tmp_path / "other.npy", size=32, seed=3)
    assert run("sigmas", "--data", tmp_path / "other.npy").exit_code == 0
    assert run("step-size", "--M", 5).exit_code == 0
    r = run("train", "--data", "cifar10", "--data-root", fake_cifar, "--dry-run", "--json", "--ngf", 8)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    cifar = NoiseSchedule.from_data(load_dataset("cifar10", fake_cifar, download=False))
    assert out["sigma_max"] == cifar.sigma_max and out["num_scales"] == cifar.num_scales
    notes = " ".join(out["notes"])
    assert "derived from other data" in notes and "other.npy" in notes and "made for another schedule" in notes


def test_train_after_sigmas_on_the_real_subset_of_other_data(tmp_path, real_subset):
    pytest.importorskip("torch")
    array_file(tmp_path / "other.npy", size=32)
    assert run("sigmas", "--data", tmp_path / "other.npy").exit_code == 0
    r = run("train", "--data", "cifar10", "--data-root", real_subset, "--dry-run", "--json")
    out = json.loads(r.stdout)
    assert round(out["sigma_max"], 6) == 49.896451 and out["num_scales"] == 220
    assert any("derived from other data" in n for n in out["notes"])


def test_the_chain_needs_no_flag_repeated(tmp_path, fake_cifar, monkeypatch):
    pytest.importorskip("torch")
    assert run("sigmas", "--data", "cifar10", "--data-root", fake_cifar).exit_code == 0
    assert run("step-size", "--M", 3).exit_code == 0
    monkeypatch.chdir(tmp_path)  # a plain train from anywhere: the schedule knows where its data is
    r = run("train", "--dry-run", "--json", "--ngf", 8)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["steps_per_scale"] == 3 and out["config"]["data"] == "cifar10"
    assert out["config"]["data_root"] == str((fake_cifar / "cifar-10-batches-py").resolve())
    notes = " ".join(out["notes"])
    assert "data from" in notes and "schedule from" in notes and "step size from" in notes
