from twisted.application.service import ServiceMaker

hoopd = ServiceMaker("hoopd", "hoopd.tap", "hoopd: a Layer 7 gateway for PostgreSQL", "hoopd")
