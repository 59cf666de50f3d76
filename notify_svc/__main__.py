"""python -m notify_svc (migrations first: python -m notify_svc.migrate)"""

from meshkit.lifecycle import service_main
from notify_svc.bootstrap import serve
from notify_svc.settings import NotifySettings

service_main("notify_svc", NotifySettings, serve)
