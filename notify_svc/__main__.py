"""python -m notify_svc [serve|migrate]"""

from meshkit.lifecycle import service_main
from notify_svc.bootstrap import migrate, serve
from notify_svc.settings import NotifySettings

service_main("notify_svc", NotifySettings, serve, {"migrate": migrate})
