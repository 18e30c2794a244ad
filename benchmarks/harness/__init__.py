"""The Leveret vs RabbitMQ benchmark harness behind ``benchmarks/run.py``.

* ``paths``: where things are; ``procs``: process, CPU and RSS sampling; ``leveret_proc`` and
  ``rabbitmq``: the two brokers; ``amqp_perf`` and ``profiling``: the load generator and py-spy;
* ``scenarios``: the registry, one module per scenario family;
* ``records``, ``fmt`` and ``report``: run records, verdicts, the markdown report and JSON;
* ``cli`` and ``matrix``: the command line and the run loop.
"""
