-- A profile change is carried into every room the user is joined to as a new member event:
-- one event per room, so it cannot be one transaction with the change. The counter is raised
-- in the profile change's own transaction and cleared (if no newer change raised it again)
-- when every room has the new member event; a server that stopped half-way finds the user
-- here at start-up and finishes the job, so no room keeps showing an old name for ever.
ALTER TABLE profiles ADD COLUMN propagation_pending BIGINT NOT NULL DEFAULT 0;

-- Start-up reads only the pending ones.
CREATE INDEX profiles_propagation_pending ON profiles (user_id) WHERE propagation_pending > 0;

-- A room upgrade writes the new room (with the old room's aliases and directory entry moved to
-- it) in one transaction, then the old room's tombstone and power levels as events of the old
-- room. The new room's transaction names it here; the mark is cleared when the old room is
-- done, and a server stopped in between finishes the old room at start-up.
ALTER TABLE rooms ADD COLUMN upgrade_pending TEXT;
CREATE INDEX rooms_upgrade_pending ON rooms (room_id) WHERE upgrade_pending IS NOT NULL;
