"""Services: what runs a restore, a generation, an evaluation or a degradation and writes its output.

The layer between the library (`ipsolve.restore`, `ipsolve.generation`, `solvers`, `degradations`, …)
and the front-ends (`ipsolve.cli`, the `ipsolve` command; `ipsolve.studio`, the web page). A service
takes a request whose values are already parsed (`values` parses what people type), checks everything
before writing anything, and writes the run folder (`run_folder`): both front-ends call the same
service, so a run started from either writes the same files. Services import the library, never a
front-end; the front-ends only parse, call a service and show its result.

- `restore_request`: `RestoreRequest`, its checks (`restore_inputs`), run.json's record, and whole
  folders of measurements; `restore_run`: one restore job into a run folder; `batch_restore`: a folder
  of measurements, batched and resumable.
- `degrade_file`: a clean image degraded into a measurement file and its sidecar.
- `generate_run`: `GenerateRequest`, nested generation with feedback into a run folder.
- `evaluation`, `eval_report`: `ipsolve eval`, its resumable outputs and its tables.
- `run_folder`, `folder_lock`, `progress`: the run folder, its lock, the progress bar.
- `values`, `checks`, `interrupts`: typed values, input checks, Ctrl-C / SIGTERM.
"""
