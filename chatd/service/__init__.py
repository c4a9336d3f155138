"""The rules of chat: who may send where, membership and roles, receipts, presence, and what is
delivered to whom. Nothing here knows about sockets, JSON or a particular backend: collaborators
(the store, an event sink, push, presence, a clock) are passed in.
"""
