"""librdkafka's mock cluster through ctypes: the library in the confluent-kafka wheel, one cluster object.

The process that hosts it is :mod:`libs.stack.broker`; this module only loads and drives the C API
(``rd_kafka_mock_*``), so the launcher can check for the library without importing the entry point.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib.util
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from libs.errors import MissingDependencyError

DEFAULT_BROKERS = 3
MAX_BROKERS = 16
MAX_PARTITIONS = 1_000
REPLICATION_FACTOR = 1
"""Each partition lives on one mock broker; the mock does not replicate data anyway."""
CONTROLLER_ID = 1
"""The mock's default controller id 0 matches no broker and breaks admin clients."""
INITIAL_REBALANCE_DELAY_MS = 0
"""The mock waits 3 s before the first group assignment by default; tests should not."""
LOG_LEVEL_WARNING = 4
"""syslog level: hides the NOTICE "No `bootstrap.servers` configured" of the handle that only hosts
the cluster (it never connects anywhere), keeps librdkafka's warnings and errors in the log."""
OP_STALL_S = 0.02
"""A mock-cluster op normally completes in microseconds; one still pending after this is woken."""
OP_TIMEOUT_S = 10.0
"""An op pending this long (despite wake-ups) means the mock thread is stuck."""
_ERRSTR_BYTES = 512
_RD_KAFKA_PRODUCER = 0
_RD_KAFKA_CONF_OK = 0

INSTALL_HINT = "run `make install`, or set SETTLE_KAFKA_BOOTSTRAP_SERVERS to a Kafka cluster"


def find_librdkafka() -> Path:
    """Path of the librdkafka shared library bundled in the confluent-kafka wheel.

    Linux wheels keep it in ``confluent_kafka.libs/``, macOS wheels in ``confluent_kafka/.dylibs/``;
    a confluent-kafka built from source links the system's librdkafka, which is used then. Does not
    import confluent_kafka (slow, and not needed to load the library). Raises
    MissingDependencyError when the package or any librdkafka is absent.
    """
    spec = importlib.util.find_spec("confluent_kafka")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"confluent-kafka is not installed: {INSTALL_HINT}.")
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    candidates = [
        *sorted((package_dir.parent / "confluent_kafka.libs").glob("librdkafka*.so*")),
        *sorted((package_dir / ".dylibs").glob("librdkafka*.dylib")),
    ]
    if candidates:
        return candidates[0]
    system_library = ctypes.util.find_library("rdkafka")
    if system_library is None:
        raise MissingDependencyError(
            "confluent-kafka is installed without a bundled librdkafka and none is on the system: "
            "reinstall it from its wheel with `make install`, or set SETTLE_KAFKA_BOOTSTRAP_SERVERS."
        )
    return Path(system_library)


def _bind(lib: ctypes.CDLL) -> None:
    """Declare the signatures used below (ctypes would otherwise truncate pointers to int)."""
    void_p, char_p, c_int, c_int32 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int32
    signatures: dict[str, tuple[object, list[object]]] = {
        "rd_kafka_conf_new": (void_p, []),
        "rd_kafka_conf_set": (c_int, [void_p, char_p, char_p, char_p, ctypes.c_size_t]),
        "rd_kafka_conf_destroy": (None, [void_p]),
        "rd_kafka_new": (void_p, [c_int, void_p, char_p, ctypes.c_size_t]),
        "rd_kafka_destroy": (None, [void_p]),
        "rd_kafka_version_str": (char_p, []),
        "rd_kafka_err2str": (char_p, [c_int]),
        "rd_kafka_mock_cluster_new": (void_p, [void_p, c_int]),
        "rd_kafka_mock_cluster_destroy": (None, [void_p]),
        "rd_kafka_mock_cluster_bootstraps": (char_p, [void_p]),
        "rd_kafka_mock_topic_create": (c_int, [void_p, char_p, c_int, c_int]),
        "rd_kafka_mock_set_controller_id": (c_int, [void_p, c_int32]),
        "rd_kafka_mock_group_initial_rebalance_delay_ms": (c_int, [void_p, c_int32]),
    }
    for name, (restype, argtypes) in signatures.items():
        try:
            function = getattr(lib, name)
        except AttributeError:
            raise MissingDependencyError(
                f"the bundled librdkafka lacks {name} (mock cluster support): install confluent-kafka "
                f">= 2.6 with `make install`, or set SETTLE_KAFKA_BOOTSTRAP_SERVERS."
            ) from None
        function.restype = restype
        function.argtypes = argtypes


class MockCluster:
    """One librdkafka mock cluster of ``brokers`` brokers, alive until :meth:`close`.

    The cluster needs a client handle for its threads and logging: a producer handle that never
    produces. Raises MissingDependencyError (no library) or RuntimeError (librdkafka refused).
    """

    def __init__(self, brokers: int, library: Path | None = None) -> None:
        assert 1 <= brokers <= MAX_BROKERS, brokers
        self._lib = ctypes.CDLL(str(library or find_librdkafka()))
        _bind(self._lib)
        self.version: str = self._lib.rd_kafka_version_str().decode()
        errstr = ctypes.create_string_buffer(_ERRSTR_BYTES)
        conf = self._lib.rd_kafka_conf_new()
        if (
            self._lib.rd_kafka_conf_set(conf, b"log_level", str(LOG_LEVEL_WARNING).encode(), errstr, _ERRSTR_BYTES)
            != _RD_KAFKA_CONF_OK
        ):
            self._lib.rd_kafka_conf_destroy(conf)
            raise RuntimeError(f"librdkafka refused log_level: {errstr.value.decode()}")
        # rd_kafka_new owns conf from here on, also when it fails.
        self._rk: int | None = self._lib.rd_kafka_new(_RD_KAFKA_PRODUCER, conf, errstr, _ERRSTR_BYTES)
        if not self._rk:
            raise RuntimeError(f"rd_kafka_new failed: {errstr.value.decode()}")
        self._mc: int | None = self._lib.rd_kafka_mock_cluster_new(self._rk, brokers)
        if not self._mc:
            self.close()
            raise RuntimeError("rd_kafka_mock_cluster_new failed (see the librdkafka log above)")
        self.brokers = brokers
        lib, mc = self._lib, self._mc
        controller_id = CONTROLLER_ID
        self._check("set controller id", self._run_op(lambda: lib.rd_kafka_mock_set_controller_id(mc, controller_id)))
        delay_ms = INITIAL_REBALANCE_DELAY_MS
        self._check(
            "set initial rebalance delay",
            self._run_op(lambda: lib.rd_kafka_mock_group_initial_rebalance_delay_ms(mc, delay_ms)),
        )

    def _check(self, what: str, err: int) -> None:
        if err != 0:
            reason = self._lib.rd_kafka_err2str(err).decode()
            raise RuntimeError(f"mock cluster: {what} failed: {reason} ({err})")

    def _run_op(self, call: Callable[[], int]) -> int:
        """Run one blocking mock-cluster call (an op served by the cluster's thread), waking it if it stalls.

        Why: librdkafka 2.16's mock thread serves its op queue and only then drains its wake-up
        pipe, so the wake-up of an op enqueued in between is thrown away and the op waits for the
        thread's 1 s poll timeout (measured: 1 start in 3 took 1-3 s longer). The thread serves the
        queue after every poll wake-up, so a TCP connection to one of its brokers unblocks the op.
        ctypes releases the GIL during the call, so this thread can poke while a worker waits.
        """
        result: list[int] = []
        worker = threading.Thread(target=lambda: result.append(call()), name="mock-op", daemon=True)
        worker.start()
        waited_s = 0.0
        while True:
            worker.join(OP_STALL_S)
            if not worker.is_alive():
                return result[0]
            waited_s += OP_STALL_S
            if waited_s >= OP_TIMEOUT_S:
                raise RuntimeError(f"a mock-cluster operation did not complete within {OP_TIMEOUT_S:g} s")
            self._wake()

    def _wake(self) -> None:
        """Connect to (and leave) the first mock broker: a socket event for the cluster's poll loop."""
        host, _, port = self.bootstrap_servers.split(",")[0].rpartition(":")
        with contextlib.suppress(OSError):  # the op may complete anyway; the next round tries again
            socket.create_connection((host, int(port)), timeout=1.0).close()

    @property
    def bootstrap_servers(self) -> str:
        """``host:port,host:port,...`` of every mock broker; ports are random at every start."""
        assert self._mc, "cluster is closed"
        value: bytes = self._lib.rd_kafka_mock_cluster_bootstraps(self._mc)
        return value.decode()

    def create_topic(self, name: str, partitions: int) -> None:
        """Create ``name`` with exactly ``partitions`` partitions (replication factor 1)."""
        assert self._mc, "cluster is closed"
        assert 1 <= partitions <= MAX_PARTITIONS, (name, partitions)
        encoded = name.encode()
        err = self._run_op(
            lambda: self._lib.rd_kafka_mock_topic_create(self._mc, encoded, partitions, REPLICATION_FACTOR)
        )
        self._check(f"create topic {name!r}", err)

    def close(self) -> None:
        """Destroy the cluster (closing its sockets) and the hosting handle. Idempotent."""
        if self._mc:
            self._lib.rd_kafka_mock_cluster_destroy(self._mc)
            self._mc = None
        if self._rk:
            self._lib.rd_kafka_destroy(self._rk)
            self._rk = None
