"""A Ctrl-C that Python drops (raised inside a weakref or garbage-collection callback) still stops the command."""

import signal
import subprocess
import sys

CODE = """
import os, signal, time, weakref
from mathtune import interrupts

interrupts.install()


class Thing:
    pass


def callback(ref):  # the signal arrives, and its KeyboardInterrupt is raised, inside the callback
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(50):
        time.sleep(0.01)


thing = Thing()
ref = weakref.ref(thing, callback)
del thing
print("went on", interrupts.interrupted(), flush=True)
interrupts.raise_if_interrupted()
print("not reached", flush=True)
"""


def test_a_swallowed_ctrl_c_is_raised_again():
    # As a terminal's Ctrl-C: SIGINT handled, even when this test runs as a background job (which ignores it).
    restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    res = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=60, preexec_fn=restore)
    assert "Exception ignored" in res.stderr and "KeyboardInterrupt" in res.stderr  # Python dropped it
    assert res.stdout.splitlines() == ["went on True"]  # and the program went on, with the signal remembered
    assert res.returncode != 0 and res.stderr.rstrip().endswith("KeyboardInterrupt")


def test_ctrl_c_is_left_alone_where_it_is_ignored():
    code = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nfrom mathtune import interrupts\n"
    code += "interrupts.install()\nprint(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)\n"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert res.stdout.strip() == "True"
