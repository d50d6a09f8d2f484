"""The ``twistd cwmpgw`` plugin; everything else lives in cwmpgw.tap."""

from twisted.application.service import ServiceMaker

cwmpgw = ServiceMaker("cwmpgw", "cwmpgw.tap", "TR-069 (CWMP) ACS gateway", "cwmpgw")
