"""Reports: the demo's markdown summary (:mod:`.markdown`) and the self-contained HTML page of runs
and comparisons (:mod:`.html`, ``disdis report``)."""

from disdis.report.html import write_html_report
from disdis.report.markdown import (REPRESENTATIONS, TARGET, UNMIXED_START, WARM_START, Clock, capture_line, headline,
                                    report_summary, shares_table, target_reached, write_report)

__all__ = ["REPRESENTATIONS", "TARGET", "UNMIXED_START", "WARM_START", "Clock", "capture_line", "headline", "report_summary",
           "shares_table", "target_reached", "write_html_report", "write_report"]
