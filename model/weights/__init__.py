"""model/weights"""
