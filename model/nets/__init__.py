"""model/nets"""
