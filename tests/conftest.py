"""Fixtures shared by the test modules."""
import pytest

import herbs
from herbs import _C

ISA_ORDER = ["portable", "avx2", "avx512"]
BEST_ISA = herbs.cpu_info()["best_isa"]
SUPPORTED_ISAS = ISA_ORDER[: ISA_ORDER.index(BEST_ISA) + 1]


@pytest.fixture(params=SUPPORTED_ISAS)
def isa(request):
    """Runs the test once per instruction set this CPU has (the kernels built per ISA follow it),
    restoring the one in use before (HERBS_ISA's choice, so a whole run under HERBS_ISA=portable
    stays on the portable kernels outside these tests)."""
    before = herbs.cpu_info()["isa"]
    _C._set_isa(request.param)
    yield request.param
    _C._set_isa(before)
