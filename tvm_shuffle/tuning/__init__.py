"""Step 3, tune: MetaSchedule with an XGBoost cost model, on this machine or over RPC.

:func:`tvm_shuffle.api.tune` (and ``python -m tvm_shuffle.tune``) drives
:func:`session.tune`; the pieces, one concept per module:

* :mod:`.tasks`: the fused TIR kernels of a model (what is tuned), most expensive first;
* :mod:`.database`: one MetaSchedule JSON database per (model, target) in the
  work directory, damaged lines set aside on open, shared between models for
  identical kernels; :mod:`.record_files` reads and appends whole lines;
* :mod:`.lock`: one tune at a time writes a records directory (an OS file lock);
* :mod:`.recording`: a batch's records, less the candidates a vanished device did not run;
* :mod:`.search`: the evolutionary search, resumed from the database (never
  measures a candidate twice, starts from the default schedule, exact budget);
* :mod:`.scheduler`: MetaSchedule's gradient task scheduler, committing every
  batch at once and stopping cleanly on Ctrl-C;
* :mod:`.builder`: compiles candidates in this process (no per-batch worker start-up);
* :mod:`.measurement`: kernel inputs (valid indices for gathers) and a load-robust timing;
* :mod:`.runner` / :mod:`.rpc` / :mod:`.remote`: where candidates and built models run (local
  CPU, or a board or GPU behind TVM's RPC tracker, with timeouts);
* :mod:`.in_model`: the tuned build, after checking each tuned kernel inside the model;
* :mod:`.progress` / :mod:`.logs`: the progress bar; MetaSchedule's logs go to files;
* :mod:`.emulated_device` (+ ``rpc_server.cc``): an aarch64 board emulated with
  qemu behind the tracker, for CI.

Nothing is imported here: MetaSchedule's runner workers import :mod:`.rpc`
and :mod:`.measurement` by name and need none of the rest.
"""
