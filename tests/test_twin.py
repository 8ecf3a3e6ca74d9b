"""The digital twin: paths through spans and cross-connects, their loss, faults, time."""
import random

import pytest

from devices.twin import Clock, Endpoint, PlantChange, Twin
from qkd_physics import DeviceProfile, link_performance

E = Endpoint.parse


class ManualTime:
    """A real-time source the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_plant(seed: int = 7) -> Twin:
    """Sites a, b, c around switch s (insertion loss 1 dB): a --10 km-- s:1, s:2 --15 km-- b,
    s:3 --5 km-- c; s:4 free for a device plugged into the switch."""
    twin = Twin(rng=random.Random(seed))
    for site in ("a", "b", "c"):
        twin.add_site(site)
    twin.add_switch("s", [1, 2, 3, 4], insertion_loss_db=1.0)
    twin.add_span("a-s", E("a:1"), E("s:1"), 10.0)
    twin.add_span("s-b", E("s:2"), E("b:1"), 15.0)
    twin.add_span("s-c", E("s:3"), E("c:1"), 5.0, attenuation_db_per_km=0.3)
    return twin


@pytest.fixture
def plant() -> Twin:
    return make_plant()


def test_clock_runs_at_its_speed_and_keeps_the_past_when_the_speed_changes():
    real = ManualTime()
    clock = Clock(speed=10.0, source=real)
    assert clock.now() == 0.0
    real.t += 2.0
    assert clock.now() == pytest.approx(20.0)
    clock.set_speed(0.5)
    real.t += 4.0
    assert clock.now() == pytest.approx(22.0)
    assert clock.speed == 0.5
    with pytest.raises(ValueError, match="clock speed must be > 0"):
        Clock(speed=0)


def test_real_clock_moves_forward():
    clock = Clock(speed=1000.0)
    first = clock.now()
    while clock.now() == first:
        pass
    assert clock.now() > first


def test_endpoint_text_form():
    assert E("sw:1") == Endpoint("sw", 1)
    assert E("site") == Endpoint("site", None)
    assert str(Endpoint("sw", 1)) == "sw:1" and str(Endpoint("site")) == "site"
    for bad in ("", ":1", "sw:", "sw:p1", "sw:0", "sw:-1", "sw:4294967296"):
        with pytest.raises(ValueError, match="is not 'node' or 'node:port' with a port number from 1 to 4294967295"):
            E(bad)
    assert E("sw:4294967295").port == 4294967295


def test_no_cross_connect_no_path(plant):
    assert plant.trace(E("a:1")) is None
    reading = plant.link_reading(E("a:1"), E("b:1"))
    assert (reading.up, reading.skr_bps, reading.qber, reading.path) == (False, 0.0, 0.0, None)


def test_path_through_a_cross_connect_and_its_loss(plant):
    plant.connect("s", 1, 2)
    path = plant.path_between(E("a:1"), E("b:1"))
    assert path.spans == ("a-s", "s-b")
    assert [(x.switch, x.port_a, x.port_b) for x in path.cross_connects] == [("s", 1, 2)]
    assert plant.path_loss_db(path) == pytest.approx(25 * 0.2 + 1.0)
    back = plant.trace(E("b:1"))
    assert back.b == E("a:1") and back.spans == ("s-b", "a-s")
    assert plant.path_between(E("a:1"), E("c:1")) is None


def test_device_plugged_into_a_switch_port(plant):
    plant.connect("s", 4, 3, insertion_loss_db=0.5)
    path = plant.trace(E("s:4"))
    assert path.b == E("c:1") and path.spans == ("s-c",)
    assert plant.path_loss_db(path) == pytest.approx(5 * 0.3 + 0.5)
    assert plant.trace(E("c:1")).b == E("s:4")


def test_reading_follows_the_physics_with_bounded_jitter(plant):
    plant.connect("s", 1, 2)
    skr, qber = link_performance(6.0, DeviceProfile())
    readings = [plant.link_reading(E("a:1"), E("b:1")) for _ in range(50)]
    assert all(r.up and r.loss_db == pytest.approx(6.0) and r.qber == pytest.approx(qber) for r in readings)
    assert all(skr * 0.95 <= r.skr_bps <= skr * 1.05 for r in readings)
    assert len({r.skr_bps for r in readings}) > 1
    assert plant.link_reading(E("a:1"), E("b:1"), jitter=0.0).skr_bps == pytest.approx(skr)  # a device's own jitter
    replay = make_plant(seed=7)
    replay.connect("s", 1, 2)
    assert [replay.link_reading(E("a:1"), E("b:1")) for _ in range(50)] == readings


def test_cut_and_repair_notify_and_bring_links_down_and_up(plant):
    plant.connect("s", 1, 2)
    seen: list[PlantChange] = []
    unsubscribe = plant.subscribe(seen.append)
    plant.cut_span("s-b")
    down = plant.link_reading(E("a:1"), E("b:1"))
    assert (down.up, down.skr_bps) == (False, 0.0) and down.path.spans == ("a-s", "s-b")
    plant.cut_span("s-b")  # already cut: no second event
    plant.repair_span("s-b")
    assert plant.link_reading(E("a:1"), E("b:1")).up
    assert seen == [PlantChange("span-cut", "s-b"), PlantChange("span-repaired", "s-b")]
    unsubscribe()
    plant.cut_span("a-s")
    assert len(seen) == 2


def test_eavesdropper_raises_the_qber_by_the_model(plant):
    plant.connect("s", 1, 2)
    seen = []
    plant.subscribe(seen.append)
    clean = plant.link_reading(E("a:1"), E("b:1"))
    plant.attach_eavesdropper("a-s", 0.2)
    tapped = plant.link_reading(E("a:1"), E("b:1"))
    assert tapped.qber == pytest.approx(link_performance(6.0, eavesdrop_fraction=0.2)[1])
    assert tapped.qber - clean.qber == pytest.approx(0.05, abs=0.003)
    assert tapped.skr_bps < clean.skr_bps
    plant.attach_eavesdropper("s-b", 0.5)  # two taps: a pulse escapes both with 0.8 * 0.5
    path = plant.path_between(E("a:1"), E("b:1"))
    assert plant.path_eavesdrop_fraction(path) == pytest.approx(0.6)
    plant.remove_eavesdropper("a-s")
    plant.remove_eavesdropper("s-b")
    assert plant.link_reading(E("a:1"), E("b:1")).qber == clean.qber
    assert [c.kind for c in seen] == ["eavesdropper-attached"] * 2 + ["eavesdropper-removed"] * 2
    with pytest.raises(ValueError, match=r"fraction must be within \(0, 1\]"):
        plant.attach_eavesdropper("a-s", 0.0)


def test_cross_connect_changes_are_notified_and_ports_are_not_reused(plant):
    seen = []
    plant.subscribe(seen.append)
    plant.connect("s", 1, 2)
    with pytest.raises(ValueError, match="port 2 is already cross-connected"):
        plant.connect("s", 3, 2)
    assert [(x.port_a, x.port_b) for x in plant.cross_connects("s")] == [(1, 2)]
    plant.disconnect("s", 2)
    assert plant.path_between(E("a:1"), E("b:1")) is None
    assert seen == [PlantChange("cross-connect-added", "s:1"), PlantChange("cross-connect-removed", "s:1")]
    with pytest.raises(ValueError, match="port 2 is not cross-connected"):
        plant.disconnect("s", 2)


def test_a_broken_subscriber_does_not_starve_the_others(plant, caplog):
    seen = []

    def broken(change):
        raise RuntimeError("subscriber bug")

    plant.subscribe(broken)
    plant.subscribe(seen.append)
    plant.cut_span("a-s")
    assert seen == [PlantChange("span-cut", "a-s")]
    assert "subscriber failed on span-cut a-s" in caplog.text


def test_a_loop_of_fibre_has_no_exit():
    twin = Twin()
    twin.add_switch("s1", [1, 2, 3])
    twin.add_switch("s2", [1, 2])
    twin.add_span("x", E("s1:1"), E("s2:1"), 1.0)
    twin.add_span("y", E("s2:2"), E("s1:2"), 1.0)
    twin.connect("s1", 1, 2)
    twin.connect("s2", 1, 2)
    assert twin.trace(E("s1:1")) is None


@pytest.mark.parametrize("call, message", [
    (lambda t: t.add_site("a"), "site or switch 'a' already exists"),
    (lambda t: t.add_switch("s2", [1, 1]), "lists a port twice"),
    (lambda t: t.add_span("a-s", E("c:2"), E("b:2"), 1.0), "span 'a-s' already exists"),
    (lambda t: t.add_span("n", E("a:2"), E("nowhere:1"), 1.0), "no site or switch 'nowhere'"),
    (lambda t: t.add_span("n", E("a:2"), E("s:9"), 1.0), "switch 's' has no port 9"),
    (lambda t: t.add_span("n", E("a:1"), E("b:2"), 1.0), "a:1 already ends span 'a-s'"),
    (lambda t: t.add_span("n", E("a:2"), E("a:2"), 1.0), "starts and ends at a:2"),
    (lambda t: t.add_span("n", E("a:2"), E("b:2"), -1.0), "length and attenuation must be >= 0"),
    (lambda t: t.connect("nope", 1, 2), "no switch 'nope'"),
    (lambda t: t.connect("s", 1, 1), "cannot connect port 1 to itself"),
    (lambda t: t.connect("s", 1, 7), "switch 's' has no port 7"),
    (lambda t: t.cut_span("nope"), "no span 'nope'"),
    (lambda t: t.trace(E("nowhere")), "no site or switch 'nowhere'"),
])
def test_mistakes_are_refused_precisely(plant, call, message):
    with pytest.raises(ValueError, match=message):
        call(plant)
