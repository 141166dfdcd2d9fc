"""core/cli"""
