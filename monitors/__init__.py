"""Monitors: config → pure computation → MonitorResult → metric_point rows."""
