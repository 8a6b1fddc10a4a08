"""Dashboards: panel queries defined once (``queries``), Grafana provisioning generated from them
(``grafana``), and the live page the Faust worker serves at ``/dashboard`` (``page``, ``web``)."""
