"""python -m analytics_svc"""

from analytics_svc.bootstrap import serve
from analytics_svc.settings import AnalyticsSettings
from meshkit.lifecycle import service_main

service_main("analytics_svc", AnalyticsSettings, serve)
