-- Argo CD health check for the kvmfleet.io kinds KvmHost, VirtualNode and VmMaster (Lua 5.1,
-- run by Argo CD with `obj`). resource_customizations/kvmfleet.io/<Kind>/health.lua link here.
-- One script, the same rules for all three kinds; they read the kstatus conditions
-- the operator writes (docs/conditions.md): whenever Ready is False exactly one of
-- Reconciling (transient) and Stalled (needs a person) is True.
--   being deleted                         -> Progressing
--   no conditions yet                     -> Progressing
--   observedGeneration < generation       -> Progressing (the status speaks of an older spec)
--   Stalled=True                          -> Degraded    "<reason>: <message>"
--   Ready=True                            -> Healthy     "<message>"
--   otherwise (Reconciling=True, ...)     -> Progressing "<reason>: <message>"
-- Source: charts/kvmfleet/argocd/ in the kvmfleet repository; tests/unit/test_argocd_health.py.
local hs = {}

local function describe(c)
  if c == nil then
    return ""
  end
  local reason = c.reason or ""
  local message = c.message or ""
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  end
  return reason .. message
end

if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Being deleted"
  return hs
end

local status = obj.status
if status == nil or status.conditions == nil or #status.conditions == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local found = {}
for _, c in ipairs(status.conditions) do
  if c.type ~= nil then
    found[c.type] = c
  end
end

local stalled, ready, reconciling = found["Stalled"], found["Ready"], found["Reconciling"]
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or ""
  return hs
end
hs.status = "Progressing"
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = describe(reconciling)
else
  hs.message = describe(ready)
end
return hs
