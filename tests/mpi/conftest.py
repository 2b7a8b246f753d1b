"""tests/mpi holds two kinds of tests:

- pytest-mpi tests (`@pytest.mark.mpi(min_size=2)`), run under
  `mpiexec -n N python -m pytest --with-mpi tests/mpi/test_dispatch.py`;
- plain driver tests (test_launch.py) that launch mpiexec themselves, so that
  a plain `python3 -m pytest` runs the MPI suite too.

pytest-mpi treats every test whose keywords contain "mpi" as an MPI test, and
a test's keywords include its folder names: it would skip the drivers here
without --with-mpi. This hook undoes that for tests without a real `mpi`
marker, and skips the drivers under --with-mpi (every rank would launch its
own mpiexec).
"""

import pytest

PYTEST_MPI_SKIP = "need --with-mpi option to run"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    with_mpi = config.getoption("--with-mpi", default=False)
    for item in items:
        if "tests/mpi/" not in item.nodeid:
            continue
        if item.get_closest_marker("mpi") is not None:
            for m in item.own_markers:
                if m.name == "skip" and m.kwargs.get("reason") == PYTEST_MPI_SKIP:
                    m.kwargs["reason"] = "needs --with-mpi; test_launch.py runs it under mpiexec -n 2 and 3"
            continue
        item.own_markers[:] = [m for m in item.own_markers
                               if not (m.name == "skip" and m.kwargs.get("reason") == PYTEST_MPI_SKIP)]
        if with_mpi:
            item.add_marker(pytest.mark.skip(reason="launches its own mpiexec: run it from a plain pytest"))
