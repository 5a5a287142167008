"""Scans spread over a Ray cluster: plan parts from the source's index, analyse each part in a Ray
task that reads its own files, merge the small partial results into the single-process result.

Needs the optional ``ray`` dependency (``pip install 'weightgate[ray]'``); nothing here imports it
at package import, so weightgate without Ray is unchanged. :mod:`gate.distributed.plan` and
:mod:`gate.distributed.part` are plain Python (tested without a cluster);
:mod:`gate.distributed.executor` is the only module that talks to Ray.
"""
