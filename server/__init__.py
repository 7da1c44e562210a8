"""shopclip.server"""
