"""``python -m advbg`` with test models registered, for tests that run the real CLI in a subprocess or under
torchrun. ``test/tiny-entry`` is conftest's TinyNet (same weights as ``make_tiny_classifier()``); each forward
sleeps ADVBG_TEST_SLEEP seconds so that a test can interrupt a search part-way."""
import os
import runpy
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import TinyNet  # noqa: E402

from advbg.data.labels import IN9_CLASSES  # noqa: E402
from advbg.models.weights import register  # noqa: E402


class SlowTinyNet(TinyNet):
    def forward(self, x):
        time.sleep(float(os.environ.get("ADVBG_TEST_SLEEP", "0")))
        return super().forward(x)


@register("test/tiny-entry")
def _tiny():
    return SlowTinyNet(9), dict(architecture="tinynet", weight_tag="seed0", source="test", weights_file=None,
                                weights_sha256=None, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(3, 32, 32),
                                class_names=IN9_CLASSES)


if __name__ == "__main__":
    runpy.run_module("advbg", run_name="__main__", alter_sys=True)
