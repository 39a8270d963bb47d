"""Coverage-guided fuzzing of the wire codec and the request validators with atheris (not in CI).

    pip install atheris
    python3 tests/reliability/atheris_harness.py -max_total_time=600 -print_final_stats=1 [CORPUS_DIR]

Each input is decoded as a header frame (``common.protocol.unpack``); what decodes is fed to every
validator the agent applies to a request (``CreateArgs``, ``ProcessSpec.from_oci``, the get_*
helpers, the supervisor's signal/status/size checks) and to the host's ``status_from_wire``.
Anything but InvalidArgumentError is a finding and stops the run (atheris prints the input).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["common"]):
    from common import ProcessSpec, protocol
    from common.errors import InvalidArgumentError
    from common.rules import check_drain_timeout, check_exit_status, check_signal, check_terminal_size


TARGETS = [
    protocol.CreateArgs,
    lambda m: ProcessSpec.from_oci(m.get("spec", m)),
    protocol.status_from_wire,
    lambda m: protocol.status_from_wire(m.get("status", m)),
    protocol.get_exec_ids,
    lambda m: protocol.get_seqs(m, "acked"),
    lambda m: protocol.get_list(m, "execs", 100_000),
    lambda m: protocol.get_int(m, "q", -1, protocol.MAX_SEQ, default=-1),
    lambda m: protocol.get_number(m, "drain_timeout", 0.0, protocol.MAX_DRAIN_TIMEOUT, 2.0),
    lambda m: protocol.choose_version(m.get("versions")),
    lambda m: protocol.datetime_from_wire(m.get("at")),
    lambda m: check_signal(m.get("signal")),
    lambda m: check_exit_status(m.get("status")),
    lambda m: check_terminal_size(m.get("width"), m.get("height")),
    lambda m: check_drain_timeout(m.get("drain_timeout")),
]


def test_one_input(data: bytes) -> None:
    try:
        header = protocol.unpack(data)
    except InvalidArgumentError:
        return
    for target in TARGETS:
        try:
            target(header)
        except InvalidArgumentError:
            continue


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
