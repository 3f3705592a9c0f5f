import threading
import time

from tasks.common import computing, teacher_for, timing
from unast_core.config import TeacherConfig


def test_the_teacher_is_cached_per_thread():
    cfg = TeacherConfig(model="tiny-random-llama")
    here = teacher_for(cfg)
    assert teacher_for(cfg) is here
    other = []
    thread = threading.Thread(target=lambda: other.append(teacher_for(cfg)))
    thread.start()
    thread.join()
    assert other[0] is not here and other[0].fingerprint == here.fingerprint  # its own copy to swap sublayers in


def test_timing_waits_for_running_compute_and_compute_waits_for_timing(tmp_path, monkeypatch):
    monkeypatch.setenv("UNAST_HOST_LOCK", str(tmp_path / "host.lock"))
    events = []

    def compute(name, hold):
        with computing():
            events.append(f"{name} start")
            time.sleep(hold)
            events.append(f"{name} end")

    def measure():
        with timing():
            events.append("timing start")
            time.sleep(0.3)
            events.append("timing end")

    first = threading.Thread(target=compute, args=("a", 0.4))
    first.start()
    time.sleep(0.1)
    timer = threading.Thread(target=measure)
    timer.start()
    time.sleep(0.1)
    second_shared = threading.Thread(target=compute, args=("b", 0.0))  # shared with a: runs at once
    second_shared.start()
    for t in (first, timer, second_shared):
        t.join()
    assert events.index("timing start") > events.index("a end")  # timing waited for the running compute
    assert events.index("b start") < events.index("a end") or events.index("b start") > events.index("timing end")
    late = threading.Thread(target=compute, args=("c", 0.0))
    with timing():
        late.start()
        time.sleep(0.2)
        assert "c start" not in events  # no compute starts while timing
    late.join()
    assert events[-2:] == ["c start", "c end"]
